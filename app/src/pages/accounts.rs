//! The admin pages for who may sign in and which API tokens work: `/users` (list, add, delete)
//! and `/tokens` (list, create — the token is shown once —, revoke). Every change goes through a
//! server function that the server checks and writes to the audit log.

use leptos::html;
use leptos::prelude::*;
use leptos_meta::Title;

use super::format::error_message;
use super::widgets::LocalTime;
use crate::auth::{
    AddUser, CreateToken, DeleteUser, NewToken, RevokeToken, TokenView, UserView, allows,
    list_tokens, list_users, use_caller,
};
use crate::model::{Caller, Role};

/// The words under each role in the forms.
fn role_hint(role: Role) -> &'static str {
    match role {
        Role::Viewer => "sees everything except secrets",
        Role::Deployer => "also starts, pauses, resumes, aborts and rolls back rollouts",
        Role::Admin => "also manages users and tokens, replays webhooks, reads the audit log",
    }
}

/// The role choices up to `highest`, `selected` ticked.
fn role_options(highest: Role, selected: Role) -> impl IntoView {
    Role::ALL
        .into_iter()
        .filter(|role| highest.allows(*role))
        .map(|role| {
            view! {
                <option value=role.as_str() selected=role == selected>
                    {format!("{role}: {}", role_hint(role))}
                </option>
            }
        })
        .collect_view()
}

/// Renders `page` for admins, a sentence for anyone else (the server refuses them anyway).
fn admins_only<V: IntoView + 'static>(
    what: &'static str,
    page: impl Fn(Caller) -> V + Send + Sync + 'static,
) -> impl IntoView {
    let caller = use_caller();
    let page = std::sync::Arc::new(page);
    view! {
        <Suspense fallback=|| ()>
            {move || {
                let page = page.clone();
                Suspend::new(async move {
                    match caller.await {
                        Some(caller) if allows(Some(&caller), Role::Admin) => {
                            page(caller).into_any()
                        }
                        _ => {
                            view! {
                                <p class="empty">{format!("Only admins can manage {what}.")}</p>
                            }
                                .into_any()
                        }
                    }
                })
            }}
        </Suspense>
    }
}

#[component]
pub fn UsersPage() -> impl IntoView {
    view! {
        <Title text="Users" />
        <div class="page-head">
            <h1>"Users"</h1>
        </div>
        {admins_only("users", |caller| view! { <Users me=caller.name /> })}
    }
}

#[component]
fn Users(me: String) -> impl IntoView {
    let add = ServerAction::<AddUser>::new();
    let delete = ServerAction::<DeleteUser>::new();
    let users = Resource::new(
        move || (add.version().get(), delete.version().get()),
        |_| list_users(),
    );
    let form = NodeRef::<html::Form>::new();
    let status = RwSignal::new(None::<Result<String, String>>);
    let confirming = RwSignal::new(None::<String>);
    // The user being deleted, for the message once it is done.
    let deleting = RwSignal::new(None::<String>);

    Effect::new(move |_| match add.value().get() {
        Some(Ok(user)) => {
            if let Some(form) = form.get_untracked() {
                form.reset();
            }
            status.set(Some(Ok(format!(
                "Added {} with the {} role.",
                user.name, user.role
            ))));
        }
        Some(Err(error)) => status.set(Some(Err(error_message(&error)))),
        None => {}
    });
    Effect::new(move |_| match delete.value().get() {
        Some(Ok(())) => {
            let name = deleting.get_untracked();
            status.set(Some(Ok(match name {
                Some(name) => format!("Deleted {name}; their sessions have ended."),
                None => "Deleted; their sessions have ended.".into(),
            })));
        }
        Some(Err(error)) => status.set(Some(Err(error_message(&error)))),
        None => {}
    });
    let pending = move || add.pending().get() || delete.pending().get();

    let remove = move |name: String| {
        confirming.set(None);
        deleting.set(Some(name.clone()));
        delete.dispatch(DeleteUser { name });
    };
    view! {
        <StatusLine status />
        <Transition fallback=|| view! { <p class="muted">"Loading the users…"</p> }>
            {move || {
                let me = me.clone();
                Suspend::new(async move {
                    match users.await {
                        Ok(users) => user_table(users, me, confirming, remove, pending).into_any(),
                        Err(error) => {
                            view! {
                                <p class="error" role="alert">
                                    "Could not load the users: " {error_message(&error)}
                                </p>
                            }
                                .into_any()
                        }
                    }
                })
            }}
        </Transition>
        <section class="card account-form" aria-labelledby="add-user-heading">
            <h2 id="add-user-heading">"Add a user"</h2>
            <ActionForm action=add node_ref=form>
                <div class="form-grid">
                    <label for="user-name">"User name"</label>
                    <input
                        id="user-name"
                        type="text"
                        name="name"
                        required
                        autocomplete="off"
                        autocapitalize="none"
                        spellcheck="false"
                    />
                    <label for="user-role">"Role"</label>
                    <select id="user-role" name="role">
                        {role_options(Role::Admin, Role::Viewer)}
                    </select>
                    <label for="user-password">"Password"</label>
                    <input
                        id="user-password"
                        type="password"
                        name="password"
                        required
                        minlength="10"
                        autocomplete="new-password"
                        aria-describedby="user-password-hint"
                    />
                    <p id="user-password-hint" class="muted small hint">
                        "At least 10 characters. Give it to the person through a safe channel."
                    </p>
                </div>
                <button type="submit" class="primary" disabled=pending>
                    "Add user"
                </button>
            </ActionForm>
        </section>
    }
}

fn user_table(
    users: Vec<UserView>,
    me: String,
    confirming: RwSignal<Option<String>>,
    remove: impl Fn(String) + Copy + Send + Sync + 'static,
    pending: impl Fn() -> bool + Copy + Send + Sync + 'static,
) -> impl IntoView {
    if users.is_empty() {
        return view! { <p class="empty">"No users yet."</p> }.into_any();
    }
    let rows = users
        .into_iter()
        .map(|user| {
            let name = user.name.clone();
            let is_me = user.name == me;
            let action = if is_me {
                view! { <span class="muted small">"you"</span> }.into_any()
            } else {
                ask_first(
                    name.clone(),
                    confirming,
                    remove,
                    pending,
                    Ask {
                        action: "Delete",
                        label: format!("Delete {name}"),
                        question: format!(
                            "Delete {name}? Their sessions end and the API tokens they created \
                             are revoked, at once."
                        ),
                        confirm: "Delete user",
                    },
                )
            };
            view! {
                <tr data-user=user.name.clone()>
                    <th scope="row" data-label="Name">{user.name.clone()}</th>
                    <td data-label="Role">
                        <span class=format!("role role-{}", user.role)>{user.role.as_str()}</span>
                    </td>
                    <td data-label="Added by">{user.created_by.clone()}</td>
                    <td data-label="Added">
                        <LocalTime ms=user.created_at />
                    </td>
                    <td data-label="">{action}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="accounts stack" data-testid="users">
            <caption class="visually-hidden">"Users"</caption>
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Role"</th>
                    <th scope="col">"Added by"</th>
                    <th scope="col">"Added"</th>
                    <th scope="col">
                        <span class="visually-hidden">"Actions"</span>
                    </th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

#[component]
pub fn TokensPage() -> impl IntoView {
    view! {
        <Title text="API tokens" />
        <div class="page-head">
            <h1>"API tokens"</h1>
        </div>
        <p class="muted">
            "Tokens let the CLI and CI call the API: "
            <code>"Authorization: Bearer <token>"</code>
            ", or "
            <code>"BATON_TOKEN"</code>
            " for the "
            <code>"baton"</code>
            " command. A token belongs to the user who created it: deleting that user revokes it. \
             Tokens made with "
            <code>"baton token create"</code>
            " belong to no user."
        </p>
        {admins_only("API tokens", |caller| view! { <Tokens role=caller.role /> })}
    }
}

#[component]
fn Tokens(role: Role) -> impl IntoView {
    let create = ServerAction::<CreateToken>::new();
    let revoke = ServerAction::<RevokeToken>::new();
    let tokens = Resource::new(
        move || (create.version().get(), revoke.version().get()),
        |_| list_tokens(),
    );
    let form = NodeRef::<html::Form>::new();
    let status = RwSignal::new(None::<Result<String, String>>);
    let created = RwSignal::new(None::<NewToken>);
    let confirming = RwSignal::new(None::<i64>);

    Effect::new(move |_| match create.value().get() {
        Some(Ok(token)) => {
            if let Some(form) = form.get_untracked() {
                form.reset();
            }
            status.set(None);
            created.set(Some(token));
        }
        Some(Err(error)) => {
            created.set(None);
            status.set(Some(Err(error_message(&error))));
        }
        None => {}
    });
    Effect::new(move |_| match revoke.value().get() {
        Some(Ok(())) => status.set(Some(Ok(
            "Revoked: the token stopped working at once.".into()
        ))),
        Some(Err(error)) => status.set(Some(Err(error_message(&error)))),
        None => {}
    });
    let pending = move || create.pending().get() || revoke.pending().get();
    let withdraw = move |id: i64| {
        confirming.set(None);
        revoke.dispatch(RevokeToken { id });
    };

    let shown_once = move || {
        created.get().map(|new| {
            let export = format!("export BATON_TOKEN={}", new.secret);
            view! {
                <div class="new-token" role="status" data-testid="new-token">
                    <p>
                        <strong>
                            {format!("Token {} ({}) created. ", new.token.name, new.token.role)}
                        </strong>
                        "Copy it now: Baton keeps only its hash and will not show it again."
                    </p>
                    <p>
                        <code class="secret" data-testid="token-secret">
                            {new.secret.clone()}
                        </code>
                    </p>
                    <p class="muted small">"For the command line: " <code>{export}</code></p>
                    <button type="button" on:click=move |_| created.set(None)>
                        "I have copied it"
                    </button>
                </div>
            }
        })
    };

    view! {
        <StatusLine status />
        {shown_once}
        <Transition fallback=|| view! { <p class="muted">"Loading the tokens…"</p> }>
            {move || Suspend::new(async move {
                match tokens.await {
                    Ok(tokens) => token_table(tokens, confirming, withdraw, pending).into_any(),
                    Err(error) => {
                        view! {
                            <p class="error" role="alert">
                                "Could not load the tokens: " {error_message(&error)}
                            </p>
                        }
                            .into_any()
                    }
                }
            })}
        </Transition>
        <section class="card account-form" aria-labelledby="create-token-heading">
            <h2 id="create-token-heading">"Create a token"</h2>
            <ActionForm action=create node_ref=form>
                <div class="form-grid">
                    <label for="token-name">"Name"</label>
                    <input
                        id="token-name"
                        type="text"
                        name="name"
                        required
                        placeholder="ci"
                        autocomplete="off"
                        spellcheck="false"
                    />
                    <label for="token-role">"Role"</label>
                    <select id="token-role" name="role">
                        {role_options(role, Role::Deployer.min(role))}
                    </select>
                </div>
                <button type="submit" class="primary" disabled=pending>
                    "Create token"
                </button>
            </ActionForm>
        </section>
    }
}

fn token_table(
    tokens: Vec<TokenView>,
    confirming: RwSignal<Option<i64>>,
    withdraw: impl Fn(i64) + Copy + Send + Sync + 'static,
    pending: impl Fn() -> bool + Copy + Send + Sync + 'static,
) -> impl IntoView {
    if tokens.is_empty() {
        return view! {
            <p class="empty">"No API tokens yet. Create one below for the CLI or CI."</p>
        }
        .into_any();
    }
    let rows = tokens
        .into_iter()
        .map(|token| {
            let id = token.id;
            let last_used = match token.last_used_at {
                Some(at) => view! { <LocalTime ms=at /> }.into_any(),
                None => view! { <span class="muted">"never"</span> }.into_any(),
            };
            let state = match token.revoked_at {
                Some(at) => view! {
                    <span class="muted">"revoked " <LocalTime ms=at /></span>
                }
                .into_any(),
                None => ask_first(
                    id,
                    confirming,
                    withdraw,
                    pending,
                    Ask {
                        action: "Revoke",
                        label: format!("Revoke {}", token.name),
                        question: format!("Revoke {}? It stops working at once.", token.name),
                        confirm: "Revoke token",
                    },
                ),
            };
            view! {
                <tr data-token=token.name.clone() class:revoked=token.revoked_at.is_some()>
                    <th scope="row" data-label="Name">{token.name.clone()}</th>
                    <td data-label="Role">
                        <span class=format!("role role-{}", token.role)>{token.role.as_str()}</span>
                    </td>
                    <td data-label="Created by">{token.created_by.clone()}</td>
                    <td data-label="Created">
                        <LocalTime ms=token.created_at />
                    </td>
                    <td data-label="Last used">{last_used}</td>
                    <td data-label="">{state}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        <table class="accounts stack" data-testid="tokens">
            <caption class="visually-hidden">"API tokens"</caption>
            <thead>
                <tr>
                    <th scope="col">"Name"</th>
                    <th scope="col">"Role"</th>
                    <th scope="col">"Created by"</th>
                    <th scope="col">"Created"</th>
                    <th scope="col">"Last used"</th>
                    <th scope="col">
                        <span class="visually-hidden">"State"</span>
                    </th>
                </tr>
            </thead>
            <tbody>{rows}</tbody>
        </table>
    }
    .into_any()
}

/// What a button that asks first says.
struct Ask {
    /// The button's text ("Delete").
    action: &'static str,
    /// Its accessible name ("Delete ada").
    label: String,
    question: String,
    /// The text of the button that does it ("Delete user").
    confirm: &'static str,
}

/// A danger button that asks first: while `confirming` holds this row's `key` it shows the
/// question with a button that calls `run(key)` and one that keeps things as they are.
fn ask_first<K>(
    key: K,
    confirming: RwSignal<Option<K>>,
    run: impl Fn(K) + Copy + Send + Sync + 'static,
    pending: impl Fn() -> bool + Copy + Send + Sync + 'static,
    ask: Ask,
) -> AnyView
where
    K: Clone + PartialEq + Send + Sync + 'static,
{
    let Ask {
        action,
        label,
        question,
        confirm,
    } = ask;
    let asking = {
        let key = key.clone();
        move || confirming.with(|asked| asked.as_ref() == Some(&key))
    };
    let open = {
        let key = key.clone();
        move |_| confirming.set(Some(key.clone()))
    };
    let yes = move |_| run(key.clone());
    view! {
        <Show
            when=asking
            fallback=move || {
                view! {
                    <button type="button" class="danger" aria-label=label.clone() on:click=open.clone()>
                        {action}
                    </button>
                }
            }
        >
            <span class="inline-confirm" role="group" aria-label=question.clone()>
                <span>{question.clone()}</span>
                <button type="button" class="danger" disabled=pending on:click=yes.clone()>
                    {confirm}
                </button>
                <button type="button" on:click=move |_| confirming.set(None)>
                    "Keep"
                </button>
            </span>
        </Show>
    }
    .into_any()
}

/// The outcome of the last change, announced to screen readers.
#[component]
fn StatusLine(status: RwSignal<Option<Result<String, String>>>) -> impl IntoView {
    view! {
        <div aria-live="polite" data-testid="account-status">
            {move || {
                status
                    .get()
                    .map(|outcome| match outcome {
                        Ok(message) => view! { <p class="notice">{message}</p> }.into_any(),
                        Err(message) => {
                            view! {
                                <p class="error" role="alert">
                                    {message}
                                </p>
                            }
                                .into_any()
                        }
                    })
            }}
        </div>
    }
}
