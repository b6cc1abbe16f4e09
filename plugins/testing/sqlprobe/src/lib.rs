//! Test plugin: `POST /sqlprobe/{mode}` runs the request body as one SQL statement in the
//! plugin's own data set and answers `{"ok": true, ...}` or `{"ok": false, "error": ...}`.
//!
//! Modes: `execute`, `query`; and in a transaction: `commit` (commits), `abandon` (returns
//! without ending it), `trap` (panics with it open), `hold` (spins with it open until the
//! deadline). The black-box tests use it to try what a hostile plugin would.

use plinth_sdk::sql::{self, Transaction};
use plinth_sdk::{Handler, Request, Response};

struct SqlProbe;

fn outcome(result: Result<serde_json::Value, sql::Error>) -> Response {
    match result {
        Ok(value) => Response::json(200, &serde_json::json!({"ok": true, "result": value})),
        Err(err) => Response::json(
            200,
            &serde_json::json!({"ok": false, "error": format!("{err:?}")}),
        ),
    }
}

impl Handler for SqlProbe {
    fn handle(request: Request) -> Response {
        let statement = request.text().unwrap_or_default().to_owned();
        match request.param("mode").unwrap_or_default() {
            "execute" => outcome(sql::execute(&statement, &[]).map(Into::into)),
            "query" => outcome(sql::query(&statement, &[]).map(|rows| rows.rows.len().into())),
            "commit" => outcome(sql::begin().and_then(|tx| {
                let affected = tx.execute(&statement, &[])?;
                Transaction::commit(tx)?;
                Ok(affected.into())
            })),
            "abandon" => outcome(sql::begin().and_then(|tx| {
                // Returned without commit or rollback: the host must roll it back.
                tx.execute(&statement, &[]).map(Into::into)
            })),
            "trap" => {
                let tx = sql::begin();
                if let Ok(tx) = &tx {
                    let _ = tx.execute(&statement, &[]);
                }
                panic!("trapping with a transaction open");
            }
            "hold" => {
                let tx = sql::begin();
                if let Ok(tx) = &tx {
                    let _ = tx.execute(&statement, &[]);
                }
                // Spin until the host's deadline stops the instance.
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            _ => Response::not_found("no such mode"),
        }
    }
}

plinth_sdk::export_plugin!(SqlProbe);
