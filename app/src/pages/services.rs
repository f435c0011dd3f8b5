//! The Services page: every configured service and its backends.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::fleet::list_services;
use crate::model::ServiceSummary;

#[component]
pub fn ServicesPage() -> impl IntoView {
    let services = Resource::new(|| (), |_| list_services());
    let (filter, set_filter) = signal(String::new());

    view! {
        <Title text="Services" />
        <div class="page-head">
            <h1>"Services"</h1>
            <label class="filter">
                <span>"Filter"</span>
                <input
                    type="search"
                    name="filter"
                    placeholder="service name"
                    prop:value=filter
                    on:input=move |ev| set_filter.set(event_target_value(&ev))
                />
            </label>
        </div>
        <Suspense fallback=|| view! { <p class="muted">"Loading services…"</p> }>
            {move || {
                let needle = filter.get().trim().to_lowercase();
                Suspend::new(async move {
                    match services.await {
                        Ok(all) => service_list(all, &needle).into_any(),
                        Err(error) => {
                            view! {
                                <p class="error" role="alert">
                                    "Could not load the services: "
                                    {error.to_string()}
                                </p>
                            }
                                .into_any()
                        }
                    }
                })
            }}
        </Suspense>
    }
}

fn service_list(all: Vec<ServiceSummary>, needle: &str) -> impl IntoView {
    if all.is_empty() {
        return view! {
            <p class="empty">
                "No services are configured yet. Add a " <code>"[[service]]"</code>
                " table to the configuration file and restart Baton."
            </p>
        }
        .into_any();
    }
    let total = all.len();
    let shown: Vec<ServiceSummary> = all
        .into_iter()
        .filter(|service| service.name.to_lowercase().contains(needle))
        .collect();
    let count = format!("Showing {} of {} services", shown.len(), total);
    view! {
        <p class="muted" data-testid="service-count">
            {count}
        </p>
        <ul class="services">
            {shown.into_iter().map(|service| view! { <ServiceCard service /> }).collect_view()}
        </ul>
    }
    .into_any()
}

#[component]
fn ServiceCard(service: ServiceSummary) -> impl IntoView {
    view! {
        <li class="card service" data-service=service.name.clone()>
            <h2>{service.name.clone()}</h2>
            <p class="muted">
                "HAProxy backend " <code>{service.haproxy_backend}</code> " on "
                {service.load_balancer}
            </p>
            <table>
                <thead>
                    <tr>
                        <th scope="col">"Backend"</th>
                        <th scope="col">"Address"</th>
                    </tr>
                </thead>
                <tbody>
                    {service
                        .backends
                        .into_iter()
                        .map(|backend| {
                            view! {
                                <tr>
                                    <td>{backend.name}</td>
                                    <td>
                                        <code>{backend.address}</code>
                                    </td>
                                </tr>
                            }
                        })
                        .collect_view()}
                </tbody>
            </table>
        </li>
    }
}
