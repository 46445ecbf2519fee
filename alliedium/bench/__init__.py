"Every benchmark: ingest, train, serve, cluster, compare (scikit-learn, PyTorch, Ignite ML, Julia MLJ); one load generator, one stats helper."
