"Every benchmark: ingest, train, serve, cluster and compare; one load generator, one stats helper."
