// Swagger UI on this server's /openapi.json. A separate file: the page's CSP allows no inline script.
// Nothing is fetched from elsewhere: no validator badge, no remote configuration.
"use strict";

const ui = SwaggerUIBundle({
  url: new URL("openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  queryConfigEnabled: false,
  persistAuthorization: false,
  displayRequestDuration: true,
  tryItOutEnabled: false,
  defaultModelsExpandDepth: 0,
  onComplete: () => {
    // The dashboard keeps its token in this tab's sessionStorage; reuse it for "Try it out".
    const token = sessionStorage.getItem("shiftscore.token");
    // preauthorizeApiKey fills any scheme by name, the http bearer one included.
    if (token) ui.preauthorizeApiKey("bearerAuth", token);
  },
});
window.ui = ui;
