//! The deployment history.

use leptos::prelude::*;
use leptos_meta::Title;

#[component]
pub fn DeploymentsPage() -> impl IntoView {
    view! {
        <Title text="Deployments" />
        <h1>"Deployments"</h1>
        <p class="empty">"No deployments yet."</p>
    }
}
