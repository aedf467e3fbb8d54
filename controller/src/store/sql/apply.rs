//! Applying an app's spec in the SQL store: create it, change its
//! replica count, or make a new revision, with the event that says so, in
//! one transaction; the app is returned as written (not read back).

use skiff_sdk::api::{App, AppSpec, EventKind};

use super::super::rows::{check_version, json, revision_identity};
use super::super::{Applied, ApplyCheck, Changed, NewEvent, Result, now_ms};
use super::SqlStore;

impl SqlStore {
    /// [`Store::apply_app`](super::super::Store::apply_app).
    pub(super) async fn apply(
        &self,
        name: &str,
        mut spec: AppSpec,
        check: &ApplyCheck<'_>,
    ) -> Result<Applied> {
        let mut tx = self.pool.begin().await?;
        let now = now_ms();
        let current = self.load_app(&mut tx, name).await?;
        // Refusing drops the transaction: it rolls back, nothing written.
        let if_version = check(current.as_ref(), &mut spec)?;
        check_version("app", name, current.as_ref().map(|a| a.version), if_version)?;
        let spec = &spec;
        self.claim_artifacts(
            &mut tx,
            std::iter::once(&spec.artifact).chain(spec.files.values()),
        )
        .await?;
        // The app as it is after the write, built from what was written
        // (reading it back took two more round trips per apply).
        let (created, new_revision, message, app) = match &current {
            None => {
                sqlx::query(
                    "INSERT INTO apps (name, spec, replicas, revision, conditions, version, created_at, updated_at) \
                     VALUES ($1, $2, $3, 1, '[]', 1, $4, $4)",
                )
                .bind(name)
                .bind(json(&revision_identity(spec)))
                .bind(i64::from(spec.replicas))
                .bind(now)
                .execute(&mut *tx)
                .await?;
                self.insert_revision(&mut tx, name, 1, spec, now).await?;
                let app = App {
                    name: name.to_owned(),
                    spec: spec.clone(),
                    revision: 1,
                    version: 1,
                    status: skiff_sdk::api::AppStatus {
                        desired_replicas: spec.replicas,
                        ready_replicas: 0,
                        conditions: Vec::new(),
                        good_revision: None,
                    },
                    created_at: now,
                    updated_at: now,
                    capability_changes: None,
                    observed: None,
                };
                (
                    true,
                    true,
                    format!("app created at revision 1 with {} replicas", spec.replicas),
                    app,
                )
            }
            Some(app) if revision_identity(&app.spec) == revision_identity(spec) => {
                if app.spec.replicas == spec.replicas {
                    let app = app.clone();
                    tx.rollback().await?;
                    return Ok(Applied {
                        app,
                        created: false,
                        new_revision: false,
                    });
                }
                self.update_app(&mut tx, app, spec, app.revision, now)
                    .await?;
                let mut after = app.clone();
                after.spec.replicas = spec.replicas;
                after.status.desired_replicas = spec.replicas;
                after.version += 1;
                after.updated_at = now;
                (
                    false,
                    false,
                    format!("replicas {} -> {}", app.spec.replicas, spec.replicas),
                    after,
                )
            }
            Some(app) => {
                let number = app.revision + 1;
                self.update_app(&mut tx, app, spec, number, now).await?;
                self.insert_revision(&mut tx, name, number, spec, now)
                    .await?;
                let mut after = app.clone();
                after.spec = spec.clone();
                after.revision = number;
                after.version += 1;
                after.updated_at = now;
                // No replica runs the new revision yet.
                after.status.desired_replicas = spec.replicas;
                after.status.ready_replicas = 0;
                (false, true, format!("revision {number} applied"), after)
            }
        };
        let kind = if created {
            EventKind::AppCreated
        } else {
            EventKind::AppUpdated
        };
        self.event_in(
            &mut tx,
            NewEvent {
                app: Some(name.into()),
                node: None,
                kind,
                message,
            },
        )
        .await?;
        self.finish(tx, Changed::app(name)).await?;
        Ok(Applied {
            app,
            created,
            new_revision,
        })
    }
}
