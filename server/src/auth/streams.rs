//! Open event streams: how many each caller may hold at once, and ending each one as soon as
//! its caller loses access.
//!
//! An event stream is one request that lasts for hours, so the auth layer's check when it
//! opened is not enough. A stream taken through [`StreamPass::follow`] checks its caller's
//! session or token again whenever the store announces that access was taken away (a sign-out,
//! a password change, a revoked token, a deleted user: [`crate::store::Store::auth_changes`]),
//! when the session expires, and every [`AuthConfig::stream_recheck`](crate::settings::AuthConfig) for
//! changes the `baton` command made from another process. It ends when the check fails; the
//! browser's reconnect then gets 401.
//!
//! The cap counts streams per user (all of a user's sessions together) and per API token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use futures::{Stream, StreamExt};

use super::Auth;
use super::error::AuthError;
use super::principal::{Credential, Principal};
use crate::store::{StoreError, now_millis};

/// Whose streams are counted together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    User(i64),
    Token(i64),
}

impl Caller {
    fn of(credential: Credential) -> Self {
        match credential {
            Credential::Session { user, .. } => Caller::User(user),
            Credential::Token { token, .. } => Caller::Token(token),
        }
    }
}

/// How many streams each caller has open.
#[derive(Debug, Default)]
pub(super) struct OpenStreams(Mutex<HashMap<Caller, u32>>);

impl OpenStreams {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Caller, u32>> {
        // The map holds plain counts, consistent after any panic.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One of a caller's places among its open streams, taken when a stream route is called (as an
/// extractor: 429 when the caller already has [`AuthConfig::streams_per_caller`](crate::settings::AuthConfig)
/// open) and given back when the stream is dropped.
pub struct StreamPass {
    auth: Auth,
    principal: Principal,
    caller: Caller,
}

impl Auth {
    fn open_stream(&self, principal: &Principal) -> Result<StreamPass, AuthError> {
        let caller = Caller::of(principal.credential);
        let limit = self.config().streams_per_caller;
        let mut counts = self.inner.streams.counts();
        let open = counts.entry(caller).or_default();
        if *open >= limit {
            tracing::warn!(caller = %principal.name, limit, "refused an event stream: too many open");
            return Err(AuthError::TooManyStreams {
                name: principal.name.clone(),
                limit,
            });
        }
        *open += 1;
        Ok(StreamPass {
            auth: self.clone(),
            principal: principal.clone(),
            caller,
        })
    }
}

impl Drop for StreamPass {
    fn drop(&mut self) {
        let mut counts = self.auth.inner.streams.counts();
        if let Some(open) = counts.get_mut(&self.caller) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.caller);
            }
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for StreamPass {
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AuthError> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .ok_or(AuthError::SignInRequired)?;
        let auth = parts.extensions.get::<Auth>().ok_or_else(|| {
            AuthError::Internal("a stream route is served without the auth layer".into())
        })?;
        auth.open_stream(principal)
    }
}

impl StreamPass {
    /// `stream` until the caller loses access (or `stream` ends); the pass is held as long as
    /// the returned stream lives.
    pub fn follow<T: Stream + Send + 'static>(
        self,
        stream: T,
    ) -> impl Stream<Item = T::Item> + Send + 'static {
        let lost = Box::pin(access_lost(self.auth.clone(), self.principal.clone()));
        stream.take_until(lost).map(move |item| {
            // Moved in here so the place is given back only when the stream is dropped.
            let _pass = &self;
            item
        })
    }
}

/// Whether a credential still grants access.
enum Standing {
    /// Live, until this time (Unix ms) for a session.
    Live {
        expires_at: Option<i64>,
    },
    Gone,
}

async fn standing(auth: &Auth, credential: Credential) -> Result<Standing, StoreError> {
    let store = auth.store();
    Ok(match credential {
        Credential::Session { session, .. } => match store.live_session_expiry(session).await? {
            Some(expires_at) => Standing::Live {
                expires_at: Some(expires_at),
            },
            None => Standing::Gone,
        },
        Credential::Token { token, .. } => {
            if store.token_is_live(token).await? {
                Standing::Live { expires_at: None }
            } else {
                Standing::Gone
            }
        }
    })
}

/// Resolves when `principal`'s session or token no longer grants access (or cannot be checked:
/// a stream fails closed).
async fn access_lost(auth: Auth, principal: Principal) {
    // Subscribed before the first check, so a change between the auth layer's check and this
    // one is not missed.
    let mut changes = auth.store().auth_changes();
    let recheck = auth.config().stream_recheck;
    loop {
        let expires_at = match standing(&auth, principal.credential).await {
            Ok(Standing::Live { expires_at }) => expires_at,
            Ok(Standing::Gone) => {
                tracing::info!(caller = %principal.name, via = ?principal.via(), "ended an event stream: its caller no longer has access");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, caller = %principal.name, "cannot check an event stream's caller; ending the stream");
                return;
            }
        };
        let expiry = async {
            match expires_at {
                Some(at) => {
                    let left = u64::try_from(at - now_millis()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(left)).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    // The store is gone; nothing can be checked any more.
                    return;
                }
            }
            () = tokio::time::sleep(recheck) => {}
            () = expiry => {}
        }
    }
}
