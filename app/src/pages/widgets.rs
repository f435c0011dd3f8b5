//! Small pieces the pages share: timestamps in the browser's time zone, a ticking clock for
//! elapsed times, status badges.

use leptos::prelude::*;

use super::format::{format_duration, status_label, utc_timestamp};
use crate::model::RolloutStatus;

/// The current time in Unix milliseconds, ticking every second in the browser (on the server
/// it is the time of rendering). Provided once by [`provide_clock`].
#[derive(Clone, Copy)]
pub struct Clock(pub ReadSignal<i64>);

/// Now, in Unix milliseconds, on whichever side runs this.
pub fn now_millis() -> i64 {
    #[cfg(feature = "hydrate")]
    {
        js_sys::Date::now() as i64
    }
    #[cfg(not(feature = "hydrate"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// Starts the shared clock: elapsed times of running steps tick with it.
pub fn provide_clock() {
    let (now, set_now) = signal(now_millis());
    #[cfg(feature = "hydrate")]
    {
        let handle = set_interval_with_handle(
            move || set_now.set(now_millis()),
            std::time::Duration::from_secs(1),
        );
        if let Ok(handle) = handle {
            on_cleanup(move || handle.clear());
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = set_now;
    provide_context(Clock(now));
}

/// The current time as a signal (a fixed value if no clock was provided).
pub fn use_now() -> Signal<i64> {
    match use_context::<Clock>() {
        Some(Clock(now)) => now.into(),
        None => Signal::stored(now_millis()),
    }
}

/// Whether the page runs in the browser, hydrated. Text that differs between server and browser
/// (time zones) switches on it, so hydration starts from exactly what the server sent.
#[derive(Clone, Copy)]
pub struct Hydrated(pub ReadSignal<bool>);

/// Provides [`Hydrated`] for the whole page: false while hydrating, true right after.
pub fn provide_hydrated() {
    let (hydrated, set_hydrated) = signal(false);
    Effect::new(move |_| set_hydrated.set(true));
    provide_context(Hydrated(hydrated));
}

pub fn use_hydrated() -> Signal<bool> {
    match use_context::<Hydrated>() {
        Some(Hydrated(hydrated)) => hydrated.into(),
        None => Signal::stored(false),
    }
}

/// A moment, in the browser's time zone once hydrated (the server renders UTC).
#[component]
pub fn LocalTime(ms: i64) -> impl IntoView {
    let (iso, utc) = utc_timestamp(ms);
    let hydrated = use_hydrated();
    let fallback = utc.clone();
    let text = move || {
        if hydrated.get() {
            browser_time(ms).unwrap_or_else(|| fallback.clone())
        } else {
            fallback.clone()
        }
    };
    view! {
        <time datetime=iso title=utc>
            {text}
        </time>
    }
}

/// How the browser writes `ms` in its own locale and time zone, with the zone's name.
#[cfg(feature = "hydrate")]
fn browser_time(ms: i64) -> Option<String> {
    use wasm_bindgen::JsValue;
    let options = js_sys::Object::new();
    for (key, value) in [
        ("year", "numeric"),
        ("month", "short"),
        ("day", "numeric"),
        ("hour", "2-digit"),
        ("minute", "2-digit"),
        ("second", "2-digit"),
        ("timeZoneName", "short"),
    ] {
        js_sys::Reflect::set(&options, &key.into(), &value.into()).ok()?;
    }
    let format = js_sys::Intl::DateTimeFormat::new(&js_sys::Array::new(), &options);
    let date = js_sys::Date::new(&JsValue::from_f64(ms as f64));
    format
        .format()
        .call1(&JsValue::NULL, &date)
        .ok()?
        .as_string()
}

#[cfg(not(feature = "hydrate"))]
fn browser_time(_ms: i64) -> Option<String> {
    None
}

/// How long something took, or has taken so far (ticking with the clock) while `end` is `None`.
pub fn elapsed(start: i64, end: Option<i64>, now: Signal<i64>) -> impl Fn() -> String {
    move || match end {
        Some(end) => format_duration(end - start),
        None => format_duration(now.get() - start),
    }
}

/// A rollout's status as a coloured badge that also says it in words.
#[component]
pub fn StatusBadge(#[prop(into)] status: Signal<RolloutStatus>) -> impl IntoView {
    view! {
        <span
            class=move || format!("badge status-{}", status.get())
            data-status=move || status.get().as_str()
        >
            {move || status_label(status.get())}
        </span>
    }
}
