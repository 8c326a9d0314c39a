"""What the test files share: servers and clients over real sockets, fixtures, personas,
Bazel workspaces, the S3 and PostgreSQL the suite starts, and polling."""
