//! The requests [`CopyWriter`] sends, pinned against a scripted API server
//! (a `tower-test` mock behind a real `kube::Client`): the counts the
//! benchmark's request figures rest on, checked in milliseconds.

use http::{Method, Request, Response, StatusCode};
use kube::api::ApiResource;
use kube::client::Body;
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::MANAGER;
use super::copies::{CopyWriter, SyncRules};
use super::copy_index::CopyRecord;
use super::outcome::Outcome;
use super::written::WrittenVersions;
use crate::api::ConflictPolicy;
use crate::domain::copy::{CopySettings, CopyTemplate, Owner};
use crate::domain::plan::Scope;
use crate::leader::Leadership;
use crate::metrics::Metrics;

/// One exchange the scripted server expects: the request's method, path and
/// (when given) content type, and the answer.
struct Exchange {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    status: StatusCode,
    body: Value,
}

/// The content type of a JSON patch (the ownership upgrade).
const JSON_PATCH: &str = "application/json-patch+json";
/// The content type of a server-side apply.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

fn exchange(method: Method, path: &str, status: StatusCode, body: Value) -> Exchange {
    Exchange {
        method,
        path: path.to_string(),
        content_type: None,
        status,
        body,
    }
}

impl Exchange {
    /// Expects the request's body to be of `content_type` too.
    fn of_type(self, content_type: &'static str) -> Self {
        Exchange {
            content_type: Some(content_type),
            ..self
        }
    }
}

/// Serves `script` in order, failing on any other request; returns the
/// handle so the test can check that nothing more was asked.
async fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    script: Vec<Exchange>,
) -> Handle<Request<Body>, Response<Body>> {
    for expected in script {
        let (request, respond) = handle.next_request().await.unwrap_or_else(|| {
            panic!(
                "the writer stopped before {} {}",
                expected.method, expected.path
            )
        });
        assert_eq!(
            (request.method(), request.uri().path()),
            (&expected.method, expected.path.as_str()),
            "unexpected request {request:?}"
        );
        if let Some(content_type) = expected.content_type {
            assert_eq!(
                request.headers().get(http::header::CONTENT_TYPE),
                Some(&http::HeaderValue::from_static(content_type)),
                "unexpected body type of {} {}",
                expected.method,
                expected.path
            );
        }
        let response = Response::builder()
            .status(expected.status)
            .body(Body::from(
                serde_json::to_vec(&expected.body).expect("a JSON body"),
            ))
            .expect("a response");
        respond.send_response(response);
    }
    handle
}

fn owner() -> Owner {
    Owner {
        namespace: "platform".into(),
        name: "settings".into(),
        uid: "replika-uid".into(),
    }
}

fn template(value: &str, immutable: bool) -> CopyTemplate {
    let source = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "settings", "namespace": "platform"},
        "immutable": immutable,
        "data": {"key": value},
    });
    let settings = CopySettings {
        name: "settings".into(),
        ..Default::default()
    };
    CopyTemplate::new(&source, &owner(), &settings).expect("a template")
}

/// The copy of `template` in `namespace` as the API server holds it, at
/// `version`; `created` gives it the field-ownership entry of our POST.
fn stored(template: &CopyTemplate, namespace: &str, version: &str, created: bool) -> Value {
    let mut object = template.for_namespace(namespace);
    object["metadata"]["uid"] = json!(format!("uid-{namespace}"));
    object["metadata"]["resourceVersion"] = json!(version);
    if created {
        object["metadata"]["managedFields"] =
            json!([{"manager": MANAGER, "operation": "Update", "apiVersion": "v1"}]);
    }
    object
}

fn metadata(object: &Value) -> kube::api::ObjectMeta {
    serde_json::from_value(object["metadata"].clone()).expect("metadata")
}

fn record(object: &Value) -> CopyRecord {
    CopyRecord::from_metadata(&metadata(object))
}

fn path(namespace: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("/api/v1/namespaces/{namespace}/configmaps/{name}"),
        None => format!("/api/v1/namespaces/{namespace}/configmaps"),
    }
}

/// A PATCH of `content_type` to the copy in `namespace`, answered with the
/// copy of `template` at `version`.
fn patched(
    content_type: &'static str,
    template: &CopyTemplate,
    namespace: &str,
    version: &str,
) -> Exchange {
    exchange(
        Method::PATCH,
        &path(namespace, Some("settings")),
        StatusCode::OK,
        stored(template, namespace, version, false),
    )
    .of_type(content_type)
}

/// Runs `sync` for each of `targets` (namespace and cached record) with a
/// writer whose client talks to a server playing `script`; the outcomes, in
/// order.
async fn pass(
    targets: Vec<(&str, Option<CopyRecord>)>,
    template: &CopyTemplate,
    written: &WrittenVersions,
    script: Vec<Exchange>,
) -> Vec<Outcome> {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, script));
    let client = kube::Client::new(service, "default");
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "ConfigMap"),
        "configmaps",
    );
    let (leadership, metrics, owner) = (Leadership::always(), Metrics::new(), owner());
    let writer = CopyWriter {
        leadership: &leadership,
        client: &client,
        resource: &resource,
        owner_uid: &owner.uid,
        written,
        metrics: &metrics,
        slots: &tokio::sync::Semaphore::new(1),
    };
    let scope = Scope::default();
    let rules = SyncRules {
        owner: &owner,
        conflict: ConflictPolicy::Refuse,
        scope: &scope,
    };
    let mut outcomes = Vec::new();
    for (namespace, cached) in &targets {
        outcomes.push(
            writer
                .sync(namespace, cached.as_ref(), template, &rules)
                .await,
        );
    }
    drop(client);
    let mut handle = server.await.expect("the scripted server");
    assert!(
        handle.next_request().await.is_none(),
        "the writer asked more than the script"
    );
    outcomes
}

#[tokio::test]
async fn a_first_fan_out_costs_one_create_per_copy() {
    let template = template("v1", false);
    let namespaces = ["team-a", "team-b", "team-c"];
    let script = namespaces
        .iter()
        .map(|ns| {
            exchange(
                Method::POST,
                &path(ns, None),
                StatusCode::CREATED,
                stored(&template, ns, "10", true),
            )
        })
        .collect();
    let written = WrittenVersions::default();
    let targets = namespaces.iter().map(|ns| (*ns, None)).collect();
    let outcomes = pass(targets, &template, &written, script).await;
    assert_eq!(
        outcomes,
        [Outcome::Created, Outcome::Created, Outcome::Created]
    );
    // The creates' echoes are known as our own: no pass follows them, and the
    // next one, over the cache that shows them, writes nothing.
    for ns in namespaces {
        let echo = metadata(&stored(&template, ns, "10", true));
        assert!(written.is_own_write(&echo), "{ns}");
    }
    let targets = namespaces
        .iter()
        .map(|ns| (*ns, Some(record(&stored(&template, ns, "10", true)))))
        .collect();
    let outcomes = pass(targets, &template, &written, Vec::new()).await;
    assert_eq!(
        outcomes,
        [Outcome::InSync, Outcome::InSync, Outcome::InSync]
    );
}

#[tokio::test]
async fn the_first_change_to_a_created_copy_upgrades_its_ownership_then_applies() {
    let old = template("v1", false);
    let new = template("v2", false);
    let written = WrittenVersions::default();
    written_at(&written, "team-a", "10");
    let script = vec![
        patched(JSON_PATCH, &old, "team-a", "11"),
        patched(APPLY_PATCH, &new, "team-a", "12"),
    ];
    let targets = vec![("team-a", Some(record(&stored(&old, "team-a", "10", true))))];
    let outcomes = pass(targets, &new, &written, script).await;
    assert_eq!(outcomes, [Outcome::Updated]);
    let echo = metadata(&stored(&new, "team-a", "12", false));
    assert!(written.is_own_write(&echo), "the apply's version is ours");
}

#[tokio::test]
async fn a_restart_over_right_copies_reads_each_once_and_writes_nothing() {
    let template = template("v1", false);
    let namespaces = ["team-a", "team-b"];
    let script = namespaces
        .iter()
        .map(|ns| {
            exchange(
                Method::GET,
                &path(ns, Some("settings")),
                StatusCode::OK,
                stored(&template, ns, "7", false),
            )
        })
        .collect();
    // A new process: nothing written yet, the cache shows copies marked current.
    let written = WrittenVersions::default();
    let targets = namespaces
        .iter()
        .map(|ns| (*ns, Some(record(&stored(&template, ns, "7", false)))))
        .collect();
    let outcomes = pass(targets, &template, &written, script).await;
    assert_eq!(outcomes, [Outcome::InSync, Outcome::InSync]);

    // The next pass over the same cache needs no request at all.
    let targets = namespaces
        .iter()
        .map(|ns| (*ns, Some(record(&stored(&template, ns, "7", false)))))
        .collect();
    let outcomes = pass(targets, &template, &written, Vec::new()).await;
    assert_eq!(outcomes, [Outcome::InSync, Outcome::InSync]);
}

#[tokio::test]
async fn a_changed_source_costs_one_apply_per_copy() {
    let old = template("v1", false);
    let new = template("v2", false);
    let written = WrittenVersions::default();
    written_at(&written, "team-a", "7");
    let script = vec![patched(APPLY_PATCH, &new, "team-a", "8")];
    let targets = vec![("team-a", Some(record(&stored(&old, "team-a", "7", false))))];
    let outcomes = pass(targets, &new, &written, script).await;
    assert_eq!(outcomes, [Outcome::Updated]);
}

#[tokio::test]
async fn an_immutable_change_costs_the_refused_apply_one_delete_and_one_create() {
    let old = template("v1", true);
    let new = template("v2", true);
    let written = WrittenVersions::default();
    written_at(&written, "team-a", "7");
    let refusal = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Invalid", "code": 422,
        "message": "ConfigMap \"settings\" is invalid: data: Forbidden: field is immutable when `immutable` is set",
    });
    let script = vec![
        exchange(
            Method::PATCH,
            &path("team-a", Some("settings")),
            StatusCode::UNPROCESSABLE_ENTITY,
            refusal,
        ),
        exchange(
            Method::DELETE,
            &path("team-a", Some("settings")),
            StatusCode::OK,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        exchange(
            Method::POST,
            &path("team-a", None),
            StatusCode::CREATED,
            stored(&new, "team-a", "9", true),
        ),
    ];
    let targets = vec![("team-a", Some(record(&stored(&old, "team-a", "7", false))))];
    let outcomes = pass(targets, &new, &written, script).await;
    assert_eq!(outcomes, [Outcome::Replaced]);
}

#[tokio::test]
async fn a_create_that_finds_its_own_copy_reads_it_instead_of_writing() {
    let template = template("v1", false);
    let conflict = json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
        "message": "configmaps \"settings\" already exists",
    });
    let script = vec![
        exchange(
            Method::POST,
            &path("team-a", None),
            StatusCode::CONFLICT,
            conflict,
        ),
        exchange(
            Method::GET,
            &path("team-a", Some("settings")),
            StatusCode::OK,
            stored(&template, "team-a", "7", false),
        ),
    ];
    let written = WrittenVersions::default();
    let outcomes = pass(vec![("team-a", None)], &template, &written, script).await;
    assert_eq!(outcomes, [Outcome::InSync]);
}

/// Records that this process's last write left `namespace`'s copy at `version`.
fn written_at(written: &WrittenVersions, namespace: &str, version: &str) {
    written.set("replika-uid", namespace, Some(version));
}
