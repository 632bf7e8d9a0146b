"""HTTP plumbing shared by every route: auth, problem+json errors, body limits, headers,
request and response schemas, pagination, uploads, the OpenAPI document, the app's settings."""
