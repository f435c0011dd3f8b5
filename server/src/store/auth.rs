//! The SQL behind users, sessions, API tokens, login throttling and the audit log.
//!
//! This module sees only hashes: argon2id PHC strings for passwords, hex SHA-256 digests for
//! session ids and tokens. Roles and actor kinds are stored as the lower-case words the
//! migration's CHECK constraints list; `crate::auth` owns their meaning.
//!
//! Every change that takes access away (a session revoked, a password changed, a token revoked,
//! a user deleted) is announced on [`Store::auth_changes`] after it commits, so open event
//! streams check their caller again at once.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Flag, Store, StoreError, Turn, now_millis};

/// Announces that access was taken away somewhere (the value only counts changes). Only this
/// process's changes: the `baton` command changes the database from another process, and
/// streams notice those at their next periodic check.
#[derive(Debug, Clone)]
pub struct AuthChanges(Arc<watch::Sender<u64>>);

impl Default for AuthChanges {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }
}

/// A user account, without its password hash.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_by: String,
    pub created_at: i64,
}

/// What a login needs to check a password.
#[derive(Clone, sqlx::FromRow)]
pub struct Credentials {
    pub id: i64,
    pub name: String,
    pub role: String,
    /// The argon2id PHC string.
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The user behind a live session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionUser {
    pub session_id: i64,
    pub user_id: i64,
    pub name: String,
    pub role: String,
    pub expires_at: i64,
}

/// An API token's record (never the token itself).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub created_by: String,
    /// The id of the user the token belongs to (revoked when that user is deleted); `None` for
    /// tokens made with the `baton` command.
    #[serde(skip)]
    pub created_by_user: Option<i64>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// The columns of [`TokenRow`], for `SELECT` and `RETURNING`.
const TOKEN_COLUMNS: &str =
    "id, name, role, created_by, created_by_user, created_at, last_used_at, revoked_at";

/// One line of the audit log to write.
#[derive(Debug, Clone, Copy)]
pub struct NewAudit<'a> {
    pub actor: &'a str,
    /// `user`, `token`, `webhook` or `cli`.
    pub actor_kind: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub address: Option<&'a str>,
    pub detail: Option<&'a str>,
}

#[derive(
    Debug,
    Clone,
    sqlx::FromRow,
    serde::Serialize,
    serde::Deserialize,
    PartialEq,
    Eq,
    utoipa::ToSchema,
)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub actor_kind: String,
    pub action: String,
    pub target: Option<String>,
    pub address: Option<String>,
    pub detail: Option<String>,
}

/// Which audit lines to list, newest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuditQuery<'a> {
    pub actor: Option<&'a str>,
    pub action: Option<&'a str>,
    /// Only ids below this one (the next page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// How many failed logins a user name and a client address may have inside the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleLimits {
    pub per_name: i64,
    pub per_address: i64,
    pub window_ms: i64,
}

impl Store {
    /// Changes that took access away, announced after their commit (see [`AuthChanges`]).
    pub fn auth_changes(&self) -> watch::Receiver<u64> {
        self.auth_changes.0.subscribe()
    }

    fn access_taken_away(&self) {
        self.auth_changes
            .0
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Creates a user; `None` if the name is taken.
    pub async fn create_user(
        &self,
        name: &str,
        role: &str,
        password_hash: &str,
        created_by: &str,
    ) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "INSERT INTO users (name, role, password_hash, created_by, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (name) DO NOTHING
             RETURNING id, name, role, created_by, created_at",
        )
        .bind(name)
        .bind(role)
        .bind(password_hash)
        .bind(created_by)
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Replaces a user's password hash and revokes the user's sessions; `false` if no such user.
    pub async fn set_password(&self, name: &str, password_hash: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let id: Option<i64> =
            sqlx::query_scalar("UPDATE users SET password_hash = $1 WHERE name = $2 RETURNING id")
                .bind(password_hash)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(id) = id else { return Ok(false) };
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.access_taken_away();
        Ok(true)
    }

    pub async fn users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, role, created_by, created_at FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn user(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, role, created_by, created_at FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn credentials(&self, name: &str) -> Result<Option<Credentials>, StoreError> {
        Ok(sqlx::query_as::<_, Credentials>(
            "SELECT id, name, role, password_hash FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// How many users have the role.
    pub async fn count_users_with_role(&self, role: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = $1")
                .bind(role)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Deletes a user, (by cascade) its sessions, and revokes the API tokens that belong to it.
    /// Refuses, in the same statement as the delete, to delete the last admin.
    pub async fn delete_user(&self, name: &str) -> Result<DeleteUser, StoreError> {
        let mut tx = self.begin_turn(Turn::Users).await?;
        // The delete is one statement, so the last-admin check and the delete cannot be split by
        // another writer on SQLite; and it comes first, so this transaction takes the write lock
        // at once (a read-then-write transaction could fail with SQLITE_BUSY on upgrading its
        // lock). On PostgreSQL, where each transaction counts the admins it sees, the turn does
        // that.
        let deleted: Option<i64> = sqlx::query_scalar(
            "DELETE FROM users WHERE name = $1
               AND (role <> 'admin' OR (SELECT COUNT(*) FROM users WHERE role = 'admin') > 1)
             RETURNING id",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(id) = deleted else {
            drop(tx);
            return Ok(match self.user(name).await? {
                Some(_) => DeleteUser::LastAdmin,
                None => DeleteUser::NotFound,
            });
        };
        let mut revoked_tokens: Vec<String> = sqlx::query_scalar(
            "UPDATE api_tokens SET revoked_at = $1 WHERE created_by_user = $2 AND revoked_at IS NULL
             RETURNING name",
        )
        .bind(now_millis())
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        self.access_taken_away();
        revoked_tokens.sort();
        Ok(DeleteUser::Deleted { revoked_tokens })
    }

    /// Records a new session for the user; the caller keeps the id, the store its hash.
    /// Sessions that expired or were revoked over a day ago are forgotten meanwhile.
    pub async fn create_session(
        &self,
        user_id: i64,
        id_hash: &str,
        address: Option<&str>,
        expires_at: i64,
    ) -> Result<i64, StoreError> {
        let day_ago = now_millis() - 24 * 60 * 60 * 1000;
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $2")
            .bind(day_ago)
            .bind(day_ago)
            .execute(&self.pool)
            .await?;
        Ok(sqlx::query_scalar(
            "INSERT INTO sessions (id_hash, user_id, address, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)
             RETURNING id",
        )
        .bind(id_hash)
        .bind(user_id)
        .bind(address)
        .bind(now_millis())
        .bind(expires_at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The user behind a session that is neither revoked nor expired.
    pub async fn session_user(&self, id_hash: &str) -> Result<Option<SessionUser>, StoreError> {
        Ok(sqlx::query_as::<_, SessionUser>(
            "SELECT s.id AS session_id, u.id AS user_id, u.name, u.role, s.expires_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(id_hash)
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// When the session with this row id expires, if it is still live (not revoked, not
    /// expired, its user not deleted).
    pub async fn live_session_expiry(&self, session_id: i64) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT expires_at FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(session_id)
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Revokes a session; `false` if it was unknown or already revoked.
    pub async fn revoke_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE id_hash = $2 AND revoked_at IS NULL",
        )
        .bind(now_millis())
        .bind(id_hash)
        .execute(&self.pool)
        .await?;
        let revoked = done.rows_affected() > 0;
        if revoked {
            self.access_taken_away();
        }
        Ok(revoked)
    }

    /// Records a new API token belonging to the user `created_by_user` (if any). The insert is
    /// one statement that checks the user still exists, so a token cannot outlive a user deleted
    /// while it was being created.
    pub async fn create_token(
        &self,
        name: &str,
        role: &str,
        token_hash: &str,
        created_by: &str,
        created_by_user: Option<i64>,
    ) -> Result<NewToken, StoreError> {
        let mut tx = self.begin_turn(Turn::Users).await?;
        let inserted = sqlx::query_as::<_, TokenRow>(&format!(
            "INSERT INTO api_tokens (name, role, token_hash, created_by, created_by_user, created_at)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE $7 IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = $8)
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(name)
        .bind(role)
        .bind(token_hash)
        .bind(created_by)
        .bind(created_by_user)
        .bind(now_millis())
        .bind(created_by_user)
        .bind(created_by_user)
        .fetch_optional(&mut *tx)
        .await;
        match inserted {
            Ok(Some(row)) => {
                tx.commit().await?;
                Ok(NewToken::Created(row))
            }
            Ok(None) => Ok(NewToken::CreatorGone),
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                Ok(NewToken::NameTaken)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether the token with this row id is live (not revoked).
    pub async fn token_is_live(&self, id: i64) -> Result<bool, StoreError> {
        let live: Flag = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL)",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        Ok(live.into())
    }

    /// Every token, live ones first, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as::<_, TokenRow>(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY revoked_at IS NOT NULL, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The live token with this hash, noting that it was used (at most once a minute, so a
    /// client polling the API does not write on every request).
    pub async fn use_token(&self, token_hash: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query_as::<_, TokenRow>(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(mut row) = row else { return Ok(None) };
        let now = now_millis();
        if row.last_used_at.is_none_or(|used| now - used >= 60_000) {
            sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
                .bind(now)
                .bind(row.id)
                .execute(&self.pool)
                .await?;
            row.last_used_at = Some(now);
        }
        Ok(Some(row))
    }

    /// Revokes the live token with this id; returns it, or `None` if there is none.
    pub async fn revoke_token(&self, id: i64) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query_as::<_, TokenRow>(&format!(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(now_millis())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if row.is_some() {
            self.access_taken_away();
        }
        Ok(row)
    }

    /// Revokes the live token with this name; returns it, or `None` if there is none.
    pub async fn revoke_token_named(&self, name: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query_as::<_, TokenRow>(&format!(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL
             RETURNING {TOKEN_COLUMNS}"
        ))
        .bind(now_millis())
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        if row.is_some() {
            self.access_taken_away();
        }
        Ok(row)
    }

    /// Records a login attempt before its password is checked, and says whether it may go
    /// ahead: refused when, counting it and every earlier attempt still inside the window,
    /// the name or the address is over its limit. Recording first makes the limit hold for
    /// attempts sent in parallel: at most `limit` of them reach the password check.
    ///
    /// The row stays as a failure unless [`Store::login_succeeded`] removes it; a refused
    /// attempt's row is removed at once, so hammering a throttled name does not extend its wait.
    pub async fn begin_login(
        &self,
        name: &str,
        address: &str,
        limits: ThrottleLimits,
    ) -> Result<LoginAttempt, StoreError> {
        let now = now_millis();
        let since = now - limits.window_ms;
        let mut tx = self.begin_turn(Turn::Logins).await?;
        sqlx::query("DELETE FROM login_failures WHERE at <= $1")
            .bind(since)
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO login_failures (name, address, at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(address)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let (by_name, by_address): (i64, i64) = sqlx::query_as(
            "SELECT
                (SELECT COUNT(*) FROM login_failures WHERE name = $1 AND at > $2 AND id <= $3),
                (SELECT COUNT(*) FROM login_failures WHERE address = $4 AND at > $5 AND id <= $6)",
        )
        .bind(name)
        .bind(since)
        .bind(id)
        .bind(address)
        .bind(since)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        if by_name <= limits.per_name && by_address <= limits.per_address {
            return Ok(LoginAttempt::Go { id });
        }
        sqlx::query("DELETE FROM login_failures WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        let wait_ms = self.throttle_wait(name, address, limits).await?;
        Ok(LoginAttempt::Throttled {
            wait_ms: wait_ms.unwrap_or(1000),
        })
    }

    /// The attempt's password was never checked (Baton was too busy): forget it, so it does not
    /// count as a failure.
    pub async fn login_abandoned(&self, attempt: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_failures WHERE id = $1")
            .bind(attempt)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The attempt proved the password: forget it and every failure of that user name (not of
    /// the address).
    pub async fn login_succeeded(&self, attempt: i64, name: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM login_failures WHERE id = $1 OR name = $2")
            .bind(attempt)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How long (ms) until the name and the address are both under their limits again: until
    /// the oldest of the failures that keep each at its limit leaves the window.
    async fn throttle_wait(
        &self,
        name: &str,
        address: &str,
        limits: ThrottleLimits,
    ) -> Result<Option<i64>, StoreError> {
        let now = now_millis();
        let since = now - limits.window_ms;
        let mut wait = None::<i64>;
        for (column, value, limit) in [
            ("name", name, limits.per_name),
            ("address", address, limits.per_address),
        ] {
            // The limit-th newest failure: while it is inside the window, so are `limit` failures.
            let at: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT at FROM login_failures WHERE {column} = $1 AND at > $2
                 ORDER BY at DESC, id DESC LIMIT 1 OFFSET $3"
            ))
            .bind(value)
            .bind(since)
            .bind((limit - 1).max(0))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(at) = at {
                let until = at + limits.window_ms - now;
                wait = Some(wait.map_or(until, |wait| wait.max(until)));
            }
        }
        Ok(wait.map(|wait| wait.max(1)))
    }

    /// Appends a line to the audit log; returns its id.
    pub async fn record_audit(&self, entry: &NewAudit<'_>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO audit_log (at, actor, actor_kind, action, target, address, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(now_millis())
        .bind(entry.actor)
        .bind(entry.actor_kind)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.address)
        .bind(entry.detail)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Audit lines, newest first.
    pub async fn audit(&self, query: &AuditQuery<'_>) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as::<_, AuditRow>(
            "SELECT * FROM audit_log WHERE ($1 IS NULL OR actor = $2) AND ($3 IS NULL OR action = $4)
                AND ($5 IS NULL OR id < $6)
             ORDER BY id DESC LIMIT $7",
        )
        .bind(query.actor)
        .bind(query.actor)
        .bind(query.action)
        .bind(query.action)
        .bind(query.before)
        .bind(query.before)
        .bind(query.limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Whether a login attempt may check its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAttempt {
    /// Go ahead; `id` is the attempt's row, a failure until [`Store::login_succeeded`].
    Go { id: i64 },
    /// Refused; the name or address may try again in this many milliseconds.
    Throttled { wait_ms: i64 },
}

/// What [`Store::create_token`] did.
#[derive(Debug, Clone)]
pub enum NewToken {
    Created(TokenRow),
    /// A live token already has the name.
    NameTaken,
    /// The user it would belong to no longer exists.
    CreatorGone,
}

/// What [`Store::delete_user`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteUser {
    /// Deleted, and these of its tokens revoked.
    Deleted {
        revoked_tokens: Vec<String>,
    },
    NotFound,
    /// The user is the only admin; deleting it would leave no one able to manage Baton.
    LastAdmin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{TestDatabase, on_both_databases};

    on_both_databases!(
        throttle_counts_failures_per_name_and_per_address_inside_the_window,
        parallel_attempts_get_no_more_password_checks_than_the_limit,
        the_last_admin_cannot_be_deleted,
        two_admins_deleting_each_other_at_once_leave_one_admin,
        a_token_name_is_free_again_once_revoked,
        deleting_a_user_revokes_the_tokens_that_belong_to_it_and_only_those,
    );

    const LIMITS: ThrottleLimits = ThrottleLimits {
        per_name: 3,
        per_address: 5,
        window_ms: 60_000,
    };

    async fn fail(store: &Store, name: &str, address: &str) {
        assert!(matches!(
            store.begin_login(name, address, LIMITS).await.unwrap(),
            LoginAttempt::Go { .. }
        ));
    }

    async fn throttle_counts_failures_per_name_and_per_address_inside_the_window(db: TestDatabase) {
        let store = db.connect().await;
        fail(&store, "alice", "10.0.0.1").await;
        fail(&store, "alice", "10.0.0.1").await;
        fail(&store, "alice", "10.0.0.2").await;
        let LoginAttempt::Throttled { wait_ms } = store
            .begin_login("alice", "10.0.0.9", LIMITS)
            .await
            .unwrap()
        else {
            panic!("three failures for alice throttle her name from any address");
        };
        assert!(wait_ms > 55_000 && wait_ms <= 60_000, "{wait_ms}");
        // The refused attempt did not count: alice's wait did not grow.
        let LoginAttempt::Throttled { wait_ms: again } = store
            .begin_login("alice", "10.0.0.9", LIMITS)
            .await
            .unwrap()
        else {
            panic!("still throttled");
        };
        assert!(again <= wait_ms);
        // Another name from the first address is under that address's limit (2 < 5).
        for name in ["bob", "carol", "dave"] {
            fail(&store, name, "10.0.0.1").await;
        }
        assert!(
            matches!(
                store.begin_login("erin", "10.0.0.1", LIMITS).await.unwrap(),
                LoginAttempt::Throttled { .. }
            ),
            "five failures from one address throttle every name from it"
        );
        // A success forgets the name's failures.
        store.login_succeeded(0, "alice").await.unwrap();
        let LoginAttempt::Go { id } = store
            .begin_login("alice", "10.0.0.9", LIMITS)
            .await
            .unwrap()
        else {
            panic!("alice may try again");
        };
        store.login_succeeded(id, "alice").await.unwrap();
    }

    async fn parallel_attempts_get_no_more_password_checks_than_the_limit(db: TestDatabase) {
        let store = db.connect().await;
        let attempts = (0..20).map(|i| {
            let store = store.clone();
            async move {
                store
                    .begin_login("alice", &format!("10.0.1.{i}"), LIMITS)
                    .await
                    .unwrap()
            }
        });
        let results = futures::future::join_all(attempts).await;
        let allowed = results
            .iter()
            .filter(|result| matches!(result, LoginAttempt::Go { .. }))
            .count();
        assert_eq!(allowed, 3, "{results:?}");
    }

    /// Returns once `count` transactions wait for their turn (PostgreSQL lists them as waiting
    /// for an advisory lock); fails after 5 s.
    async fn wait_until_waiting_for_their_turn(store: &Store, count: i64) {
        let mut waiting = 0;
        for _ in 0..500 {
            waiting = sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&store.pool)
            .await
            .unwrap();
            if waiting == count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{waiting} transactions wait for their turn, not {count}");
    }

    #[tokio::test]
    async fn on_postgres_a_token_asked_for_while_its_user_is_being_deleted_is_not_created() {
        let store = TestDatabase::postgres().connect().await;
        let ada = store
            .create_user("ada", "admin", "x", "cli")
            .await
            .unwrap()
            .unwrap();
        store.create_user("bob", "admin", "x", "cli").await.unwrap();
        // Ada's deletion, stopped between revoking her tokens and committing.
        let mut deleting = store.begin_turn(Turn::Users).await.unwrap();
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(ada.id)
            .execute(&mut *deleting)
            .await
            .unwrap();
        sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE created_by_user = $2")
            .bind(now_millis())
            .bind(ada.id)
            .execute(&mut *deleting)
            .await
            .unwrap();
        let creating = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .create_token("ada-ci", "deployer", "h1", "ada", Some(ada.id))
                    .await
                    .unwrap()
            }
        });
        wait_until_waiting_for_their_turn(&store, 1).await;
        deleting.commit().await.unwrap();
        let created = creating.await.unwrap();
        assert!(matches!(created, NewToken::CreatorGone), "{created:?}");
        assert!(store.use_token("h1").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn on_postgres_an_attempt_counts_an_earlier_one_that_has_not_committed_yet() {
        let store = TestDatabase::postgres().connect().await;
        // An attempt that has recorded itself but not yet committed (a slow connection, another
        // Baton): its id is lower than those of the attempts that follow.
        let mut slow = store.begin_turn(Turn::Logins).await.unwrap();
        sqlx::query(
            "INSERT INTO login_failures (name, address, at) VALUES ('alice', '10.0.0.1', $1)",
        )
        .bind(now_millis())
        .execute(&mut *slow)
        .await
        .unwrap();
        let attempts: Vec<_> = (0..3)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .begin_login("alice", &format!("10.0.2.{i}"), LIMITS)
                        .await
                        .unwrap()
                })
            })
            .collect();
        // They wait for their turn...
        wait_until_waiting_for_their_turn(&store, 3).await;
        // ...so each counts it once it commits: 1 + 3 attempts, one over the limit of 3.
        slow.commit().await.unwrap();
        let mut allowed = 0;
        for attempt in attempts {
            if matches!(attempt.await.unwrap(), LoginAttempt::Go { .. }) {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 2);
    }

    async fn the_last_admin_cannot_be_deleted(db: TestDatabase) {
        let store = db.connect().await;
        store
            .create_user("root", "admin", "x", "cli")
            .await
            .unwrap();
        assert!(
            store
                .create_user("root", "viewer", "y", "cli")
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.delete_user("root").await.unwrap(),
            DeleteUser::LastAdmin
        );
        store.create_user("ops", "admin", "x", "cli").await.unwrap();
        assert_eq!(
            store.delete_user("root").await.unwrap(),
            DeleteUser::Deleted {
                revoked_tokens: vec![]
            }
        );
        assert_eq!(
            store.delete_user("root").await.unwrap(),
            DeleteUser::NotFound
        );
    }

    async fn two_admins_deleting_each_other_at_once_leave_one_admin(db: TestDatabase) {
        let store = db.connect().await;
        for round in 0..20 {
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            store.create_user(&a, "admin", "x", "cli").await.unwrap();
            store.create_user(&b, "admin", "x", "cli").await.unwrap();
            let (first, second) = tokio::join!(store.delete_user(&a), store.delete_user(&b));
            let mut outcomes = [first.unwrap(), second.unwrap()];
            outcomes.sort_by_key(|o| format!("{o:?}"));
            assert_eq!(
                outcomes,
                [
                    DeleteUser::Deleted {
                        revoked_tokens: vec![]
                    },
                    DeleteUser::LastAdmin
                ]
            );
            let admins = store.users().await.unwrap();
            assert_eq!(admins.iter().filter(|u| u.role == "admin").count(), 1);
            for user in admins {
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(user.id)
                    .execute(&store.pool)
                    .await
                    .unwrap();
            }
        }
    }

    fn created(outcome: NewToken) -> TokenRow {
        match outcome {
            NewToken::Created(row) => row,
            other => panic!("expected a new token, got {other:?}"),
        }
    }

    async fn a_token_name_is_free_again_once_revoked(db: TestDatabase) {
        let store = db.connect().await;
        let first = created(
            store
                .create_token("ci", "deployer", "h1", "cli", None)
                .await
                .unwrap(),
        );
        assert!(matches!(
            store
                .create_token("ci", "deployer", "h2", "cli", None)
                .await
                .unwrap(),
            NewToken::NameTaken
        ));
        assert!(store.use_token("h1").await.unwrap().is_some());
        store.revoke_token(first.id).await.unwrap().unwrap();
        assert!(store.use_token("h1").await.unwrap().is_none());
        created(
            store
                .create_token("ci", "deployer", "h2", "cli", None)
                .await
                .unwrap(),
        );
    }

    async fn deleting_a_user_revokes_the_tokens_that_belong_to_it_and_only_those(db: TestDatabase) {
        let store = db.connect().await;
        let ada = store
            .create_user("ada", "admin", "x", "cli")
            .await
            .unwrap()
            .unwrap();
        let bob = store
            .create_user("bob", "admin", "x", "cli")
            .await
            .unwrap()
            .unwrap();
        created(
            store
                .create_token("ada-ci", "deployer", "h1", "ada", Some(ada.id))
                .await
                .unwrap(),
        );
        created(
            store
                .create_token("bob-ci", "deployer", "h2", "bob", Some(bob.id))
                .await
                .unwrap(),
        );
        created(
            store
                .create_token("machine", "deployer", "h3", "cli", None)
                .await
                .unwrap(),
        );
        let mut changes = store.auth_changes();

        assert_eq!(
            store.delete_user("ada").await.unwrap(),
            DeleteUser::Deleted {
                revoked_tokens: vec!["ada-ci".into()]
            }
        );
        assert!(changes.has_changed().unwrap(), "open streams are told");
        changes.mark_unchanged();
        assert!(store.use_token("h1").await.unwrap().is_none());
        assert!(store.use_token("h2").await.unwrap().is_some());
        assert!(store.use_token("h3").await.unwrap().is_some());
        // A token asked for by ada while she was being deleted is not created.
        assert!(matches!(
            store
                .create_token("late", "deployer", "h4", "ada", Some(ada.id))
                .await
                .unwrap(),
            NewToken::CreatorGone
        ));
        // Creating things takes no access away: streams are not disturbed.
        assert!(!changes.has_changed().unwrap());
    }
}
