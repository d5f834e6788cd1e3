"""program-user-info: Kafka -> flatten -> Cassandra, and the User Detail Report exhaust."""
