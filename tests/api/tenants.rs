//! Tenant isolation: a foreign run or job is a 404, never a 403.
use crate::helpers::*;
use reqwest::Method;
use serde_json::{json, Value};

#[actix_web::test]
async fn tenant_b_sees_nothing_of_tenant_a() {
    let app = spawn_app().await;
    let (job, run) = app.submit_job(None).await;
    let b = |method: Method, path: &str| app.req_as("globex", method, path);
    for path in [
        format!("{ORCH}/runs/{run}"),
        format!("{ORCH}/runs/{run}/first-signal"),
        format!("{ENGINE}/runs/{run}/timeline"),
    ] {
        assert_problem(
            b(Method::GET, &path).send().await.unwrap(),
            404,
            "run_not_found",
        )
        .await;
    }
    assert_problem(
        b(Method::GET, &format!("/jobs/{job}"))
            .send()
            .await
            .unwrap(),
        404,
        "job_not_found",
    )
    .await;
    let res = b(Method::POST, &format!("/jobs/{job}/cancel"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 404, "job_not_found").await;
    let res = b(Method::POST, "/jobs")
        .json(&json!({"pack": "external", "run_id": run}))
        .send()
        .await
        .unwrap();
    assert_problem(res, 422, "run_not_found").await;
    for path in ["/jobs".to_owned(), format!("{ORCH}/runs")] {
        let list: Value = b(Method::GET, &path)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let items = list
            .as_object()
            .unwrap()
            .values()
            .find_map(|v| v.as_array())
            .unwrap();
        assert!(items.is_empty(), "{path} lists nothing of tenant A");
    }

    // B cannot lease A's job…
    let res = b(Method::POST, &format!("{ORCH}/workers/lease"))
        .json(&json!({"workerId": "b", "packs": ["external"]}))
        .send()
        .await
        .unwrap();
    let leased: Value = res.json().await.unwrap();
    assert!(leased["jobs"].as_array().unwrap().is_empty());
    // …nor report on it, even holding A's lease id.
    let l = app.lease_one().await;
    for action in ["progress", "complete", "fail"] {
        let res = b(Method::POST, &format!("{ORCH}/jobs/{job}/{action}"))
            .json(&if action == "fail" {
                json!({"leaseId": l["leaseId"], "message": "x"})
            } else {
                json!({"leaseId": l["leaseId"]})
            })
            .send()
            .await
            .unwrap();
        assert_problem(res, 404, "job_not_found").await;
    }
    assert_eq!(
        app.job(&job).await["state"],
        "loading",
        "A's job is untouched"
    );
}
