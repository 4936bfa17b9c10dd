//! Response bodies, one file per resource: the types the handlers serialize,
//! from which the OpenAPI document derives its schemas (`src/openapi.rs`
//! only assembles them), so the documented shape is the shape served.

pub mod job;
pub mod run;
pub mod worker;
