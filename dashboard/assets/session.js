/* With a login (dashboard/auth.py): a Dash request answered 401 means the
   session ended (signed out elsewhere, expired, the dashboard restarted without
   DORA_DASH_SECRET). Open the login page instead of leaving a page that no
   longer updates; after signing in it comes back here. */
(function () {
  const send = window.fetch;
  window.fetch = function () {
    return send.apply(this, arguments).then(function (response) {
      const login = response.status === 401 && response.headers.get("X-Dora-Login");
      if (login) {
        const here = window.location.pathname + window.location.search;
        window.location.assign(login + "?next=" + encodeURIComponent(here));
      }
      return response;
    });
  };
})();
