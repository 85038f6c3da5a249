"""The application: daemon, command line, configuration assembly, HTTP API, publisher, ingest, demo."""
