//! The OpenAPI 3.1 description served at `/openapi.json`. Hand-written (one
//! small document, no macro crate) and checked by a test against the routes.

use serde_json::{json, Value};

pub fn document() -> Value {
    let err = json!({"$ref": "#/components/schemas/Error"});
    let errors = json!({
        "400": {"description": "Invalid JSON or field value", "content": {"application/json": {"schema": err}}},
        "401": {"description": "Missing or invalid bearer token", "content": {"application/json": {"schema": err}}},
        "413": {"description": "Request body too large", "content": {"application/json": {"schema": err}}}
    });
    let with = |mut ok: Value, extra: Value| {
        if let (Some(o), Some(e)) = (ok.as_object_mut(), errors.as_object()) {
            for (k, v) in e {
                o.insert(k.clone(), v.clone());
            }
            if let Some(x) = extra.as_object() {
                for (k, v) in x {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
        ok
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "prescale API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Demand forecasts, cost-optimal instance choice and budget allocation for batch compute environments. All routes except /healthz need `Authorization: Bearer <token>`."
        },
        "security": [{"bearer": []}],
        "paths": {
            "/predict_demand": {"post": {
                "summary": "Predicted vCPU / memory / GPU demand per quantile, for an environment over a horizon or for one job",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}}},
                "responses": with(json!({"200": {"description": "Prediction", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictResponse"}}}}}),
                    json!({"404": {"description": "Unknown compute environment", "content": {"application/json": {"schema": err}}}}))
            }},
            "/get_optimal_instance": {"post": {
                "summary": "Cheapest expected-cost instance (or fleet) for a demand, with ranked alternatives",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OptimalRequest"}}}},
                "responses": with(json!({"200": {"description": "Choice", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OptimalResponse"}}}}}),
                    json!({"422": {"description": "Nothing allowed fits", "content": {"application/json": {"schema": err}}}}))
            }},
            "/allocate_budget": {"post": {
                "summary": "Set a job / project / user budget for a period; returns the ledger account after the change",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AllocateRequest"}}}},
                "responses": with(json!({"200": {"description": "Account", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Account"}}}}}), json!({}))
            }},
            "/healthz": {"get": {"summary": "Liveness and state summary (no auth)", "security": [],
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/metrics": {"get": {"summary": "Prometheus / OpenMetrics text",
                "responses": {"200": {"description": "Metrics", "content": {"application/openmetrics-text": {"schema": {"type": "string"}}}},
                               "401": {"description": "Missing or invalid bearer token"}}}},
            "/openapi.json": {"get": {"summary": "This document",
                "responses": {"200": {"description": "OpenAPI document", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "string"},
                    "field": {"type": ["string", "null"], "description": "The request field at fault (`body` for malformed JSON)"}}},
                "PredictRequest": {"type": "object", "additionalProperties": false,
                    "description": "Either `compute_environment` (with optional horizon and quantiles) or `job`.",
                    "properties": {
                        "compute_environment": {"type": "string"},
                        "horizon_s": {"type": "integer", "minimum": 1, "maximum": 604800, "default": 3600},
                        "quantiles": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "default": [0.1, 0.5, 0.9]},
                        "job": {"$ref": "#/components/schemas/JobSubmitted"}}},
                "JobSubmitted": {"type": "object", "required": ["job_id", "submitted_at", "compute_environment", "job_type", "project", "user", "priority", "vcpus", "memory_mib", "gpus", "elasticity"],
                    "properties": {
                        "job_id": {"type": "string"}, "submitted_at": {"type": "integer", "description": "epoch ms"},
                        "compute_environment": {"type": "string"}, "job_type": {"type": "string"},
                        "project": {"type": "string"}, "user": {"type": "string"}, "priority": {"type": "integer"},
                        "vcpus": {"type": "number"}, "memory_mib": {"type": "integer"}, "gpus": {"type": "integer"},
                        "estimated_runtime_s": {"type": ["integer", "null"]}, "budget_usd": {"type": ["number", "null"]},
                        "deadline": {"type": ["integer", "null"]}, "elasticity": {"type": "boolean"}}},
                "QuantileDemand": {"type": "object", "properties": {
                    "quantile": {"type": "number"}, "vcpus": {"type": "number"}, "memory_mib": {"type": "number"}, "gpus": {"type": "number"},
                    "runtime_s": {"type": "number"}, "vcpu_hours": {"type": "number"}}},
                "PredictResponse": {"type": "object", "properties": {
                    "compute_environment": {"type": "string"}, "forecaster": {"type": "string"},
                    "quantiles": {"type": "array", "items": {"$ref": "#/components/schemas/QuantileDemand"}, "description": "Environment: peak over the horizon per quantile. Job: its shape and runtime quantiles."},
                    "steps": {"type": "array", "items": {"type": "object", "properties": {
                        "at": {"type": "integer"}, "vcpus": {"type": "array", "items": {"type": "number"}},
                        "memory_mib": {"type": "array", "items": {"type": "number"}}, "gpus": {"type": "array", "items": {"type": "number"}}}}},
                    "bucket_ms": {"type": "integer"}, "horizon_s": {"type": "integer"}, "job_id": {"type": "string"},
                    "runtime_source": {"type": "string"}}},
                "OptimalRequest": {"type": "object", "required": ["vcpus"], "additionalProperties": false, "properties": {
                    "vcpus": {"type": "number", "exclusiveMinimum": 0}, "memory_mib": {"type": "integer", "minimum": 0},
                    "gpus": {"type": "integer", "minimum": 0}, "max_usd_per_hour": {"type": "number"}, "max_usd_per_job": {"type": "number"},
                    "markets": {"type": "array", "items": {"type": "string", "enum": ["SPOT", "ON_DEMAND", "RESERVED"]}},
                    "regions": {"type": "array", "items": {"type": "string"}}, "providers": {"type": "array", "items": {"type": "string"}},
                    "duration_s": {"type": "integer"}, "deadline": {"type": "integer", "description": "epoch ms"},
                    "fleet": {"type": "boolean", "description": "Allow several instances; default one instance if any fits, else a fleet"},
                    "compute_environment": {"type": "string", "description": "Apply this environment's policy"},
                    "alternatives": {"type": "integer", "default": 5}}},
                "ChosenPool": {"type": "object", "properties": {
                    "provider": {"type": "string"}, "region": {"type": "string"}, "zone": {"type": ["string", "null"]},
                    "instance_type": {"type": "string"}, "market": {"type": "string"}, "count": {"type": "integer"},
                    "usd_per_hour": {"type": "number"}, "expected_usd_per_hour": {"type": "number"},
                    "interruption_rate_per_h": {"type": "number"}, "stale_price": {"type": "boolean"}}},
                "RankedChoice": {"type": "object", "properties": {
                    "rank": {"type": "integer"}, "pools": {"type": "array", "items": {"$ref": "#/components/schemas/ChosenPool"}},
                    "vcpus": {"type": "number"}, "memory_mib": {"type": "integer"}, "gpus": {"type": "integer"},
                    "usd_per_hour": {"type": "number"}, "expected_usd_per_hour": {"type": "number"},
                    "expected_job_usd": {"type": "number"}, "method": {"type": "string"}}},
                "OptimalResponse": {"type": "object", "properties": {
                    "instance_type": {"type": "string"}, "market": {"type": "string"}, "region": {"type": "string"},
                    "zone": {"type": ["string", "null"]}, "count": {"type": "integer"}, "usd_per_hour": {"type": "number"},
                    "expected_usd_per_hour": {"type": "number"}, "expected_job_usd": {"type": "number"},
                    "choice": {"$ref": "#/components/schemas/RankedChoice"},
                    "alternatives": {"type": "array", "items": {"$ref": "#/components/schemas/RankedChoice"}}}},
                "AllocateRequest": {"type": "object", "required": ["scope", "id", "usd"], "additionalProperties": false, "properties": {
                    "scope": {"type": "string", "enum": ["job", "project", "user"]}, "id": {"type": "string"},
                    "usd": {"type": "number", "minimum": 0},
                    "period": {"type": "string", "enum": ["total", "day", "week", "month"], "default": "total"}}},
                "Account": {"type": "object", "properties": {
                    "key": {"type": "string"}, "scope": {"type": "string"}, "id": {"type": "string"}, "period": {"type": "string"},
                    "allocated": {"type": "number"}, "committed": {"type": "number"}, "spent": {"type": "number"}, "remaining": {"type": "number"}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn documents_every_route() {
        let d = super::document();
        for p in [
            "/predict_demand",
            "/get_optimal_instance",
            "/allocate_budget",
            "/healthz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(d["paths"].get(p).is_some(), "{p} missing");
        }
    }
}
