//! Fault tests against clustered engines on this machine: `make test-cluster` starts them
//! (`scripts/pg-replica.sh up`, `scripts/rabbit-cluster.sh up`), runs this target with
//! `cargo test -p dispatcher-e2e --test cluster -- --test-threads=1`, and stops them. Not part of
//! `make test` (`test = false` in tests/Cargo.toml).

mod broker_failover;
mod pg_failover;
mod pg_pair;
mod read_replica;
mod support;
