// Package queue is cinderport's JetStream transport. Jobs live on the
// work-queue stream CINDERPORT_JOBS under cinderport.jobs.<kind>.<zone>,
// de-duplicated by job id (Nats-Msg-Id); each zone has one durable pull
// consumer shared by all its workers. The latest status of every job is
// kept in the KV bucket cinderport_status, events go out on
// cinderport.events.<job-id>.<state>, and jobs that fail permanently or
// exhaust their deliveries (the server's announcements are kept in the
// stream CINDERPORT_ADVISORIES until handled) land on
// cinderport.dead.<kind>.<zone> in the stream CINDERPORT_DEAD with the
// reason. The KV bucket cinderport_leases fences job ownership (one
// delivery at a time may finish a job), cinderport_cancels carries the
// operators' cancel requests, and the stream CINDERPORT_S3_EVENTS keeps
// S3 bucket notifications until the bridge has turned them into jobs.
package queue
