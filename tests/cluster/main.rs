//! Scale-out fault tests against a 3-node RabbitMQ cluster (`scripts/rabbit-cluster.sh`) and a
//! Postgres primary with a streaming replica (`scripts/pg-replica.sh`). Not part of `make test`:
//! `make test-cluster` brings the engines up, runs these one at a time and takes them down.

mod broker_failover;
mod support;
