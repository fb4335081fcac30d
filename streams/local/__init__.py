"""Developer tooling, apart from the client plumbing: which cluster a command talks to, and the project's own
single-node Kafka broker (KRaft) provisioned from Maven Central and managed for `make run` and the tests."""
