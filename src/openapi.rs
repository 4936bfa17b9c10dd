//! `/openapi.json`, generated from the handlers' annotations.

use actix_web::HttpResponse;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(info(
    title = "runsignal",
    description = "Run orchestrator: first signal, jobs, remote workers"
))]
pub struct ApiDoc;

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
