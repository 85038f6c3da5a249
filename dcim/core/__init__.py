"""The dependency-free core: samples, pipeline, metrics, durable log, line protocol, config base types,
alarm events and the one SQLite writer. It imports nothing from drivers, rules, simulators or the application."""
