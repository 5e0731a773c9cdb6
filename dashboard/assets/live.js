/* Live run pages (dashboard/livestream.py): follow the run's progress notices,
   relayed by the dashboard from the API's server-sent events, instead of
   polling. Each notice of a new step or status sets the page's `run-notice`
   store, which runs the page's refresh; notices closer together than the
   poll interval are merged into one refresh. While the stream is open the
   poll timer is off. When the stream cannot open (every relay slot taken)
   or breaks, polling takes over until it is back (the browser retries a
   broken stream by itself; a refused one is asked for again every
   RETRY_MS). After the run's final status the stream is closed and a poll
   or two more catch late telemetry. */
(function () {
  const RETRY_MS = 10000;
  let current = null; // the followed run: {runId, source, last, lastBump, timer, ...}

  function shown() {
    return document.getElementById("run-live-follow");
  }

  function setProps(id, props) {
    // only while a run page is shown (its stores have no DOM node to look for)
    if (shown()) window.dash_clientside.set_props(id, props);
  }

  function onThisPage(state) {
    // Dash swaps pages without a reload: a stream outlives its page unless closed
    const marker = shown();
    return marker && marker.dataset.run === String(state.runId);
  }

  function stop() {
    if (current) {
      if (current.source) current.source.close();
      clearTimeout(current.timer);
      clearTimeout(current.retry);
      clearInterval(current.watch);
      current = null;
    }
  }

  function bump(state, notice) {
    const wait = state.gap - (Date.now() - state.lastBump);
    if (wait > 0) {
      state.pending = notice;
      if (!state.timer) {
        state.timer = setTimeout(function () {
          state.timer = null;
          if (current === state) bump(state, state.pending);
        }, wait);
      }
      return;
    }
    state.lastBump = Date.now();
    setProps("run-notice", { data: Object.assign({ at: state.lastBump }, notice) });
  }

  function onNotice(state, event) {
    if (current !== state) return;
    const notice = JSON.parse(event.data);
    const same = notice.step === state.last.step && notice.status === state.last.status;
    state.last = notice;
    if (state.final.has(notice.status)) {
      // the API ends the stream now
      stop();
      setProps("run-live-follow", { children: "ended" });
      setProps("run-notice", { data: Object.assign({ at: Date.now() }, notice) });
      setProps("run-tick", { disabled: false });
    } else {
      setProps("run-tick", { disabled: true }); // a poll answered meanwhile may have re-armed it
      if (!same) bump(state, notice);
    }
  }

  function open(state) {
    const source = new EventSource(state.url);
    state.source = source;
    source.onopen = function () {
      if (current !== state) return;
      setProps("run-tick", { disabled: true });
      setProps("run-live-follow", { children: "stream" });
    };
    source.onerror = function () {
      if (current !== state) return;
      setProps("run-tick", { disabled: false });
      setProps("run-live-follow", { children: "poll" });
      if (source.readyState === EventSource.CLOSED) {
        // refused (no free slot, or the dashboard is gone): ask again later
        state.retry = setTimeout(function () {
          if (current === state) open(state);
        }, RETRY_MS);
      }
    };
    source.addEventListener("progress", function (event) {
      onNotice(state, event);
    });
  }

  function follow(cfg) {
    stop();
    if (!cfg || !window.EventSource) return "poll";
    const state = {
      runId: cfg.run,
      url: cfg.url,
      last: { step: cfg.step, status: cfg.status },
      gap: cfg.gap,
      final: new Set(cfg.final),
      lastBump: 0,
    };
    current = state;
    state.watch = setInterval(function () {
      if (current === state && !onThisPage(state)) stop(); // frees the relay's slot
    }, 1000);
    open(state);
    return "connecting";
  }

  window.dash_clientside = window.dash_clientside || {};
  window.dash_clientside.dora_live = { follow: follow };
})();
