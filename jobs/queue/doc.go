// Package queue is cinderport's JetStream transport. Jobs live on the
// work-queue stream CINDERPORT_JOBS under cinderport.jobs.<kind>.<zone>,
// de-duplicated by job id (Nats-Msg-Id); each zone has one durable pull
// consumer shared by all its workers. The latest status of every job is
// kept in the KV bucket cinderport_status, events go out on
// cinderport.events.<job-id>.<state>, and jobs that fail permanently or
// exhaust their deliveries land on cinderport.dead.<kind>.<zone> in the
// stream CINDERPORT_DEAD with the reason.
package queue
