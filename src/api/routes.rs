//! The table of `/api/v1`: each route with its handler and its OpenAPI
//! description (see [`super::openapi`]).

use super::openapi::{Api, Op};
use super::{agents, blackboard, credits, dlq, invocations, jobs, settings, sink, tokens};

/// Every `/api/v1` route, with its documentation.
pub(super) fn v1_api() -> Api {
    use agents::{BroadcastBody, HeartbeatBody, SendBody};
    use blackboard::{CasBody, DeleteBody, IncrementBody, LockBody, PutBody};
    const NEW_JOB: &[(&str, &str)] = &[("job_id", "$response.body#/id")];
    const CLAIMED_ITEM: &[(&str, &str)] = &[
        ("job_id", "$request.path.job_id"),
        ("item_id", "$response.body#/item_id"),
    ];
    const NEW_INSTANCE: &[(&str, &str)] = &[("instance_id", "$response.body#/instance_id")];
    const NEW_TOKEN: &[(&str, &str)] = &[("token_id", "$response.body#/id")];
    Api::default()
        .route(
            Op::post(
                "/jobs",
                "jobs",
                "Spawn a job: reserve its credits and queue its items",
            )
            .status(201)
            .body::<crate::jobs::JobSpec>()
            .link("get_jobs_job_id", NEW_JOB)
            .link("post_jobs_job_id_claim", NEW_JOB)
            .link("post_jobs_job_id_cancel", NEW_JOB)
            .link("get_jobs_job_id_results", NEW_JOB)
            .link("post_jobs_job_id_broadcast", NEW_JOB),
            jobs::create,
        )
        .route(
            Op::get("/jobs", "jobs", "List the tenant's jobs, newest first")
                .query::<jobs::ListQuery>(),
            jobs::list,
        )
        .route(
            Op::post(
                "/jobs/simulate",
                "jobs",
                "Estimate a job's credits, duration and risks; reserves nothing",
            )
            .body::<jobs::SimulateRequest>(),
            jobs::simulate,
        )
        .route(
            Op::get("/jobs/{job_id}", "jobs", "A job's state and progress"),
            jobs::get_one,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/claim",
                "jobs",
                "Claim items for a worker (optionally waiting for them)",
            )
            .query::<jobs::ClaimQuery>()
            .link("post_jobs_job_id_items_item_id_complete", CLAIMED_ITEM)
            .link("post_jobs_job_id_items_item_id_fail", CLAIMED_ITEM),
            jobs::claim,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/items/{item_id}/complete",
                "jobs",
                "Complete an item (idempotent) and charge it",
            )
            .optional_body::<jobs::CompleteBody>(),
            jobs::complete,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/items/{item_id}/fail",
                "jobs",
                "Fail an item: retry it or end it in the DLQ",
            )
            .optional_body::<jobs::FailBody>(),
            jobs::fail,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/items/complete",
                "jobs",
                "Complete many deliveries in one call; an outcome per item",
            )
            .body::<jobs::BatchCompleteBody>(),
            jobs::complete_batch,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/items/fail",
                "jobs",
                "Fail many deliveries in one call; an outcome per item",
            )
            .body::<jobs::BatchFailBody>(),
            jobs::fail_batch,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/items/{item_id}/release",
                "jobs",
                "Give back a delivery the worker holds: it goes out again at once",
            )
            .query::<jobs::ReleaseQuery>(),
            jobs::release_one,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/release",
                "jobs",
                "Give back every delivery the worker holds (on shutdown)",
            )
            .query::<jobs::ReleaseQuery>(),
            jobs::release_all,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/cancel",
                "jobs",
                "Cancel a job and refund every uncompleted item",
            )
            .optional_body::<jobs::CancelBody>(),
            jobs::cancel,
        )
        .route(
            Op::get(
                "/jobs/{job_id}/results",
                "jobs",
                "Completed items' outputs, in order",
            )
            .query::<jobs::ResultsQuery>(),
            jobs::results,
        )
        .route(
            Op::post(
                "/jobs/{job_id}/broadcast",
                "agents",
                "Send a message to every agent of a job",
            )
            .body::<BroadcastBody>(),
            agents::broadcast,
        )
        .route(
            Op::get("/credits", "credits", "The tenant's credit balance"),
            credits::show,
        )
        .route(
            Op::get(
                "/settings",
                "credits",
                "The server's prices and the limits its scripts are given",
            ),
            settings::show,
        )
        .route(
            Op::post("/credits/grant", "credits", "Grant credits to a tenant")
                .admin()
                .body::<credits::GrantBody>(),
            credits::grant,
        )
        .route(
            Op::get("/agents", "agents", "List agent instances").query::<agents::ListQuery>(),
            agents::list,
        )
        .route(
            Op::post(
                "/agents/register",
                "agents",
                "Register an agent instance and create its inbox",
            )
            .status(201)
            .body::<crate::agents::registry::Registration>()
            .link("get_agents_instance_id", NEW_INSTANCE)
            .link("post_agents_instance_id_heartbeat", NEW_INSTANCE)
            .link("post_agents_instance_id_messages", NEW_INSTANCE)
            .link("get_agents_instance_id_messages", NEW_INSTANCE)
            .link("post_agents_instance_id_messages_receive", NEW_INSTANCE)
            .link("delete_agents_instance_id", NEW_INSTANCE),
            agents::register,
        )
        .route(
            Op::get("/agents/{instance_id}", "agents", "One agent instance"),
            agents::get_one,
        )
        .route(
            Op::delete(
                "/agents/{instance_id}",
                "agents",
                "Deregister an agent instance",
            ),
            agents::deregister,
        )
        .route(
            Op::post(
                "/agents/{instance_id}/heartbeat",
                "agents",
                "Record that an instance is alive",
            )
            .optional_body::<HeartbeatBody>(),
            agents::heartbeat,
        )
        .route(
            Op::post(
                "/agents/{instance_id}/messages",
                "messages",
                "Send a message to an instance's inbox",
            )
            .status(201)
            .body::<SendBody>(),
            agents::send,
        )
        .route(
            Op::get(
                "/agents/{instance_id}/messages",
                "messages",
                "An inbox's messages, with filters",
            )
            .query::<agents::MessagesQuery>(),
            agents::list_messages,
        )
        .route(
            Op::post(
                "/agents/{instance_id}/messages/receive",
                "messages",
                "Receive new messages (optionally waiting)",
            )
            .query::<agents::ReceiveQuery>(),
            agents::receive,
        )
        .route(
            Op::post(
                "/agents/{instance_id}/messages/{message_id}/read",
                "messages",
                "Mark a message read (delivered or not yet: then it is never delivered)",
            ),
            agents::read,
        )
        .route(
            Op::post(
                "/invocations",
                "invocations",
                "Invoke an agent and wait for its response or the timeout",
            )
            .body::<crate::agents::invoke::InvokeRequest>(),
            invocations::invoke,
        )
        .route(
            Op::get(
                "/dlq",
                "dlq",
                "Dead letters: items past their retries, messages delivered too often",
            )
            .query::<dlq::ListQuery>(),
            dlq::list,
        )
        .route(
            Op::post(
                "/dlq/{entry_id}/replay",
                "dlq",
                "Replay a dead letter once: a message to its inbox, an item as a new attempt",
            ),
            dlq::replay,
        )
        .route(
            Op::get("/invocations", "invocations", "The invocation audit trail")
                .query::<invocations::ListQuery>(),
            invocations::list,
        )
        .route(
            Op::get(
                "/invocations/stats",
                "invocations",
                "Invocations per status over recent hours",
            )
            .query::<invocations::StatsQuery>(),
            invocations::stats,
        )
        .route(
            Op::post(
                "/invocations/respond",
                "invocations",
                "Answer an invocation",
            )
            .body::<invocations::RespondBody>(),
            invocations::respond,
        )
        .route(
            Op::get("/invocations/{invoke_id}", "invocations", "One invocation"),
            invocations::get_one,
        )
        .route(
            Op::get(
                "/blackboard/{key}",
                "blackboard",
                "Read a key of the default namespace",
            ),
            blackboard::get,
        )
        .route(
            Op::put(
                "/blackboard/{key}",
                "blackboard",
                "Write a key of the default namespace",
            )
            .body::<PutBody>(),
            blackboard::put,
        )
        .route(
            Op::post(
                "/blackboard/{key}/increment",
                "blackboard",
                "Increment a number in the default namespace",
            )
            .optional_body::<IncrementBody>(),
            blackboard::increment,
        )
        .route(
            Op::post(
                "/blackboard/{key}/lock",
                "blackboard",
                "Acquire, extend or release a lock in the default namespace",
            )
            .body::<LockBody>(),
            blackboard::lock,
        )
        .route(
            Op::get(
                "/namespaces/{ns}/entries/{key}",
                "blackboard",
                "Read an entry",
            ),
            blackboard::ns_get,
        )
        .route(
            Op::put(
                "/namespaces/{ns}/entries/{key}",
                "blackboard",
                "Write an entry (optionally with a TTL and a fence)",
            )
            .body::<PutBody>(),
            blackboard::ns_put,
        )
        .route(
            Op::delete(
                "/namespaces/{ns}/entries/{key}",
                "blackboard",
                "Delete an entry",
            )
            .optional_body::<DeleteBody>(),
            blackboard::ns_delete,
        )
        .route(
            Op::post(
                "/namespaces/{ns}/entries/{key}/cas",
                "blackboard",
                "Compare-and-set an entry",
            )
            .body::<CasBody>(),
            blackboard::ns_cas,
        )
        .route(
            Op::post(
                "/namespaces/{ns}/entries/{key}/increment",
                "blackboard",
                "Increment a numeric entry",
            )
            .optional_body::<IncrementBody>(),
            blackboard::ns_increment,
        )
        .route(
            Op::post(
                "/namespaces/{ns}/locks/{name}",
                "blackboard",
                "Acquire, extend or release a fenced lock",
            )
            .body::<LockBody>(),
            blackboard::ns_lock,
        )
        .route(
            Op::get(
                "/namespaces",
                "blackboard",
                "The tenant's blackboard namespaces (the first 1,000 by name)",
            ),
            blackboard::namespaces,
        )
        .route(
            Op::get(
                "/sink",
                "sink",
                "What the sink has still to mirror: the tenant's outbox, or every tenant's (admin)",
            )
            .query::<sink::StatusQuery>(),
            sink::status,
        )
        .route(
            Op::get(
                "/namespaces/{ns}/keys",
                "blackboard",
                "A namespace's keys in order, a page at a time",
            )
            .query::<blackboard::KeysQuery>(),
            blackboard::ns_keys,
        )
        .route(
            Op::get(
                "/namespaces/{ns}/range",
                "blackboard",
                "Entries with numeric values in a score range",
            )
            .query::<blackboard::RangeQuery>(),
            blackboard::ns_range,
        )
        .route(
            Op::get(
                "/namespaces/{ns}/top",
                "blackboard",
                "The k entries with the highest (or lowest) values",
            )
            .query::<blackboard::TopQuery>(),
            blackboard::ns_top,
        )
        .route(
            Op::get(
                "/namespaces/{ns}/aggregate",
                "blackboard",
                "Count, sum, min, max and mean of a namespace",
            ),
            blackboard::ns_aggregate,
        )
        .route(
            Op::get(
                "/tokens",
                "tokens",
                "List tenant tokens (never their secrets)",
            )
            .admin()
            .query::<tokens::ListQuery>(),
            tokens::list,
        )
        .route(
            Op::post(
                "/tokens",
                "tokens",
                "Create a tenant token; its secret is shown once",
            )
            .admin()
            .status(201)
            .body::<tokens::CreateBody>()
            .link("post_tokens_token_id_rotate", NEW_TOKEN)
            .link("delete_tokens_token_id", NEW_TOKEN),
            tokens::create,
        )
        .route(
            Op::delete(
                "/tokens/{token_id}",
                "tokens",
                "Revoke a token, effective at once",
            )
            .admin(),
            tokens::revoke,
        )
        .route(
            Op::post(
                "/tokens/{token_id}/rotate",
                "tokens",
                "Replace a token's secret; the old one stops working",
            )
            .admin(),
            tokens::rotate,
        )
}

/// The OpenAPI document of `/api/v1`.
pub fn openapi_document() -> serde_json::Value {
    v1_api().finish().1
}
