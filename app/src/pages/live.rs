//! Following a Server-Sent Events stream from a component, for as long as it lives.
//!
//! The browser's `EventSource` does the hard part: it reconnects by itself and sends
//! `Last-Event-ID`, so the server replays exactly what was missed. On the server this module
//! does nothing (streams start after hydration).

use leptos::prelude::*;

/// Where the live stream stands, for the "Live" indicator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "hydrate"), allow(dead_code))]
pub enum Connection {
    /// Not opened yet (the server render, or the wasm has not loaded).
    Waiting,
    Live,
    /// Dropped; the browser is reconnecting.
    Reconnecting,
    /// The server refused the stream; the browser will not retry.
    Closed,
}

/// What to do with one named event: its `data` and its `id` (empty when the event had none).
pub type Handler = Box<dyn FnMut(String, String)>;

/// Opens `url` as an `EventSource`, calls the handler named after each event's `event:` field,
/// keeps `connection` up to date, and closes the stream when the calling component goes away.
#[cfg(feature = "hydrate")]
pub fn follow(url: &str, connection: RwSignal<Connection>, handlers: Vec<(&'static str, Handler)>) {
    use send_wrapper::SendWrapper;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let Ok(source) = web_sys::EventSource::new(url) else {
        connection.set(Connection::Closed);
        return;
    };
    let mut listeners: Vec<Closure<dyn FnMut(web_sys::MessageEvent)>> = Vec::new();
    for (name, mut handler) in handlers {
        let listener = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(
            move |event: web_sys::MessageEvent| {
                let data = event.data().as_string().unwrap_or_default();
                handler(data, event.last_event_id());
            },
        );
        let _ = source.add_event_listener_with_callback(name, listener.as_ref().unchecked_ref());
        listeners.push(listener);
    }
    let opened = Closure::<dyn FnMut(web_sys::Event)>::new(move |_event: web_sys::Event| {
        connection.set(Connection::Live);
    });
    source.set_onopen(Some(opened.as_ref().unchecked_ref()));
    let errored = {
        let source = source.clone();
        Closure::<dyn FnMut(web_sys::Event)>::new(move |_event: web_sys::Event| {
            connection.set(if source.ready_state() == web_sys::EventSource::CLOSED {
                Connection::Closed
            } else {
                Connection::Reconnecting
            });
        })
    };
    source.set_onerror(Some(errored.as_ref().unchecked_ref()));

    let guard = SendWrapper::new((source, listeners, opened, errored));
    on_cleanup(move || {
        let (source, _listeners, _opened, _errored) = guard.take();
        source.set_onopen(None);
        source.set_onerror(None);
        source.close();
    });
}

#[cfg(not(feature = "hydrate"))]
pub fn follow(
    _url: &str,
    _connection: RwSignal<Connection>,
    _handlers: Vec<(&'static str, Handler)>,
) {
}

/// A small "Live" / "Reconnecting…" indicator, announced politely to screen readers.
#[component]
pub fn ConnectionBadge(connection: RwSignal<Connection>) -> impl IntoView {
    let text = move || match connection.get() {
        Connection::Waiting => "Not live yet",
        Connection::Live => "Live",
        Connection::Reconnecting => "Reconnecting…",
        Connection::Closed => "Not live: reload the page",
    };
    let class = move || match connection.get() {
        Connection::Waiting => "live live-waiting",
        Connection::Live => "live live-on",
        Connection::Reconnecting => "live live-retrying",
        Connection::Closed => "live live-closed",
    };
    view! {
        <span class=class role="status" data-testid="connection">
            {text}
        </span>
    }
}
