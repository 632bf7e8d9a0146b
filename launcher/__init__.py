"""Starting the service's processes (API, workers, scheduler, `shiftscore up`); the CLI calls these."""
