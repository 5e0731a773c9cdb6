/* Live run pages (dashboard/livestream.py): follow the run's progress notices,
   relayed by the dashboard from the API's server-sent events, instead of
   polling. Each notice of a new step or status sets the page's `run-notice`
   store, which runs the page's refresh; notices closer together than the
   poll interval are merged into one refresh. While the stream is open the
   poll timer is off; when the stream cannot open or breaks, polling takes
   over (the timer is on again) until it is back. After the run's final
   status the stream is closed and one more poll catches late telemetry. */
(function () {
  let current = null; // {runId, source, last, lastBump, timer, pending}

  function setProps(id, props) {
    // only while the run page is shown (its stores have no DOM node to look for)
    if (document.getElementById("run-live-follow")) {
      window.dash_clientside.set_props(id, props);
    }
  }

  function stop() {
    if (current) {
      current.source.close();
      clearTimeout(current.timer);
      current = null;
    }
  }

  function onThisPage(state) {
    // Dash swaps pages without a reload: a stream outlives its page unless closed here
    const store = document.getElementById("run-live-follow");
    return store && store.dataset.run === String(state.runId);
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

  function follow(cfg) {
    stop();
    if (!cfg || !window.EventSource) return "poll";
    const state = {
      runId: cfg.run,
      last: { step: cfg.step, status: cfg.status },
      lastBump: 0,
      timer: null,
      pending: null,
      final: new Set(cfg.final),
      gap: cfg.gap,
    };
    state.source = new EventSource(cfg.url);
    current = state;
    state.source.onopen = function () {
      if (current !== state) return;
      setProps("run-tick", { disabled: true });
      setProps("run-live-follow", { children: "stream" });
    };
    state.source.onerror = function () {
      // refused (closed for good) or broken (the browser retries): poll meanwhile
      if (current !== state) return;
      setProps("run-tick", { disabled: false });
      setProps("run-live-follow", { children: "poll" });
    };
    state.source.addEventListener("progress", function (event) {
      if (current !== state) return;
      if (!onThisPage(state)) {
        stop();
        return;
      }
      const notice = JSON.parse(event.data);
      const same = notice.step === state.last.step && notice.status === state.last.status;
      state.last = notice;
      if (state.final.has(notice.status)) {
        // the API ends the stream now; a poll or two more catch late telemetry
        stop();
        setProps("run-live-follow", { children: "ended" });
        setProps("run-notice", { data: Object.assign({ at: Date.now() }, notice) });
        setProps("run-tick", { disabled: false });
      } else {
        setProps("run-tick", { disabled: true }); // a poll answered meanwhile may have re-armed it
        if (!same) bump(state, notice);
      }
    });
    return "connecting";
  }

  window.dash_clientside = window.dash_clientside || {};
  window.dash_clientside.dora_live = { follow: follow };
})();
