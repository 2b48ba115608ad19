// Package libtest holds the tests of the application libraries, outbox/
// and inbox/, that need a real PostgreSQL. They live in the relay's module
// because they use internal/pgtest: the libraries are modules of their own
// (so a service that writes events builds with pgx alone), and importing
// internal/pgtest from there would pull the relay's module and its
// dependencies back into theirs. The libraries keep their pure unit tests.
package libtest
