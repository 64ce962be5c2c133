/*! notifications.js: a browser client for the notifications service.
 *
 * No dependencies, no build step (ES2017). It renders nothing: it fetches a stream
 * ticket with the page's bearer token, opens the Server-Sent Events stream, and emits
 * what arrives; when the stream is unavailable it polls the inbox instead.
 *
 *   const client = new NotificationsClient({baseUrl: '', getToken: () => token});
 *   client.addEventListener('notification', (e) => show(e.detail.notification));
 *   client.addEventListener('unread', (e) => badge(e.detail.unread));
 *   client.start();
 *
 * Events (listeners get `{type, detail, target}`):
 *   notification  {notification, cursor, direct, source: 'stream' | 'poll'}
 *                 a stored notification (cursor = its `id:`), or a direct push (direct: true,
 *                 not stored: it cannot be marked read or deleted). Never twice for one id.
 *   unread        {unread, by_customer?, by_group?, source}
 *   read          {ids: [...], read: true|false} or {all: true, read: true, ...}; `local: true`
 *                 when it is this client's own REST call (the stream's echo may follow)
 *   deleted       {ids: [...]}
 *   ack           {ids: [id], acked_at}: a notice was acknowledged (on this device: `local: true`,
 *                 with `notification`; on another: from the stream). See ack(id).
 *   reset         {reason, limit, cursor}: too many missed; refetch the inbox
 *   status        {state, transport, failures, cursor, reason?, error?}; state is one of
 *                 connecting, live, reconnecting, polling, unauthorized, stopped
 *   error         {error}: the token was refused (the client stops; call start() again)
 *
 * Browser notifications: while the tab is hidden and the Notification permission is granted,
 * every new notification is also shown as a system notification (`systemNotifications: false`
 * turns it off). `enablePush()` registers the service worker `/static/notifications-sw.js`,
 * subscribes this browser to Web Push with the server's VAPID key and posts the subscription,
 * so notifications arrive with no tab open; `disablePush()` takes it back. The tab and the
 * service worker mark each id they show in one Cache Storage entry, so a notification the tab
 * showed is never shown again when its push arrives (nor the other way round).
 *
 * A 429 (the per-user stream cap, or a budget: `error.retryAfter` holds its Retry-After in
 * seconds) is honoured: nothing is asked of the server again before Retry-After has passed.
 * EventSource cannot see a status, so the stream's refusal is read from the ticket request,
 * which the server answers with the 429 the stream would get.
 *
 * Reconnects: the ticket is single use and EventSource's own Last-Event-ID is lost with a
 * new URL, so every reconnect fetches a new ticket and sends `&last_event_id=<cursor>`.
 * Fallback: without EventSource, or after `sseFailureLimit` consecutive streams that would
 * not open while REST answers, it polls GET /v1/notifications with back-off (and tries the
 * stream again every `sseRetryInterval`).
 */
(function (root, factory) {
  'use strict';
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.NotificationsClient = factory();
  }
}(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  const G = typeof globalThis !== 'undefined' ? globalThis : (typeof self !== 'undefined' ? self : window);

  const DEFAULTS = {
    baseUrl: '',
    customerId: null,        // stream and list one customer only
    useEventSource: true,
    sseFailureLimit: 3,      // consecutive streams that would not open (REST fine) before polling
    reconnectDelay: 1000,    // first reconnect delay in ms, doubled per consecutive failure
    maxReconnectDelay: 15000,
    openTimeout: 20000,      // a stream not open after this long counts as failed
    requestTimeout: 15000,   // any REST call
    pollInterval: 5000,
    maxPollInterval: 60000,  // back-off ceiling while polling fails
    hiddenPollFactor: 4,     // poll this much less often while the page is hidden
    pollLimit: 50,
    sseRetryInterval: 60000, // while polling, try the stream again this often
    catchUpDelay: 1000,      // after a stream opens without a cursor, one poll to close the gap
    knownLimit: 5000,        // ids remembered for de-duplication
    fetch: null,             // injectable for tests / other runtimes
    systemNotifications: true, // a hidden tab shows new notifications with the Notification API
    serviceWorkerUrl: '/static/notifications-sw.js',
    EventSource: null,
  };
  const NAMED_EVENTS = ['unread', 'read', 'deleted', 'ack', 'reset'];
  const PAGE_SLACK_MS = 5000; // polling: an unknown item older than the newest known one by more is not new

  class NotificationsError extends Error {
    constructor(status, body, fallbackMessage, retryAfter) {
      const message = (body && body.message) || fallbackMessage || ('HTTP ' + status);
      super(message);
      this.name = 'NotificationsError';
      this.status = status;            // 0 = no answer (network, timeout)
      this.code = body && body.code ? body.code : null;
      this.body = body || null;
      this.retryAfter = retryAfter == null ? null : retryAfter; // seconds, from a 429's Retry-After
    }
  }

  /** Retry-After as seconds (a number of seconds or an HTTP date), or null. */
  function parseRetryAfter(value) {
    if (!value) return null;
    if (/^\s*\d+\s*$/.test(value)) return Number(value);
    const at = Date.parse(value);
    return isNaN(at) ? null : Math.max(0, (at - Date.now()) / 1000);
  }

  /** The delay before the next attempt: the back-off, but never less than the server asked. */
  function delayAfter(error, fallback) {
    const asked = error && error.retryAfter != null ? error.retryAfter * 1000 : 0;
    return Math.max(fallback, asked);
  }

  function backoff(base, max, attempt) {
    const delay = Math.min(max, base * Math.pow(2, Math.max(0, attempt - 1)));
    return Math.round(delay * (0.75 + Math.random() * 0.5));
  }

  const SHOWN_CACHE = 'notifications-shown';   // shared with notifications-sw.js

  /** Mark `id` shown; false when the tab or the service worker showed it already. */
  async function markShown(id) {
    if (!G.caches) return true;
    const cache = await G.caches.open(SHOWN_CACHE);
    const key = '/__notifications_shown__/' + encodeURIComponent(id);
    if (await cache.match(key)) return false;
    await cache.put(key, new Response(String(Date.now())));
    return true;
  }

  function base64UrlBytes(text) {
    const padded = (text + '==='.slice((text.length + 3) % 4)).replace(/-/g, '+').replace(/_/g, '/');
    const raw = G.atob(padded);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function timeOf(notification) {
    const t = notification && notification.created_at ? Date.parse(notification.created_at) : NaN;
    return isNaN(t) ? null : t;
  }

  class NotificationsClient {
    constructor(options) {
      if (!options || typeof options.getToken !== 'function') {
        throw new TypeError('NotificationsClient needs {getToken: () => token}');
      }
      this.options = Object.assign({}, DEFAULTS);
      for (const key of Object.keys(options)) {
        if (options[key] !== undefined) this.options[key] = options[key]; // undefined: the default
      }
      this.baseUrl = String(this.options.baseUrl || '').replace(/\/+$/, '');
      this.cursor = options.cursor != null ? String(options.cursor) : null;
      this.state = 'stopped';
      this.transport = null;
      this.failures = 0;          // consecutive failed attempts (for back-off)
      this.streamFailures = 0;    // consecutive streams that did not open while REST answered
      this.lastUnread = null;
      this._listeners = new Map();
      this._known = new Map();    // id -> {read, deleted}
      this._newest = null;        // newest created_at (ms) among known notifications
      this._baselined = false;    // the inbox's first page was seen once (polling needs it)
      this._running = false;
      this._conn = null;          // the current stream attempt
      this._es = null;
      this._timers = {};
      this._pollPage = null;      // ids of the last polled page, for deletions
      this._pollDelay = this.options.pollInterval;
      this._onOnline = () => this._wakeUp();
      // A page put in the back/forward cache keeps its connections unless told: close the stream
      // when the page is hidden that way, resume from the cursor when it is shown again.
      this._onPageHide = () => {
        if (!this._running) return;
        this._halt();
        this._suspended = true;
      };
      this._onPageShow = () => {
        if (!this._suspended) return;
        this._suspended = false;
        this.start();
      };
    }

    // ------------------------------------------------------------------ events

    addEventListener(type, listener) {
      if (typeof listener !== 'function') return;
      if (!this._listeners.has(type)) this._listeners.set(type, new Set());
      this._listeners.get(type).add(listener);
    }

    removeEventListener(type, listener) {
      const set = this._listeners.get(type);
      if (set) set.delete(listener);
    }

    /** addEventListener that returns its own remover. */
    on(type, listener) {
      this.addEventListener(type, listener);
      return () => this.removeEventListener(type, listener);
    }

    _emit(type, detail) {
      const event = {type: type, detail: detail, target: this};
      const handlers = Array.from(this._listeners.get(type) || []);
      if (typeof this['on' + type] === 'function') handlers.push(this['on' + type]);
      for (const handler of handlers) {
        try {
          handler.call(this, event);
        } catch (err) {
          setTimeout(() => { throw err; }, 0); // a listener's bug must not break the client
        }
      }
    }

    _setStatus(state, transport, extra) {
      const changed = state !== this.state || transport !== this.transport;
      this.state = state;
      this.transport = transport;
      if (changed || (extra && extra.force)) {
        const detail = Object.assign({state: state, transport: transport, failures: this.failures,
          cursor: this.cursor}, extra || {});
        delete detail.force;
        this._emit('status', detail);
      }
    }

    // ------------------------------------------------------------------ lifecycle

    /** Open the stream (or start polling). Safe to call again after stop() or a refused token. */
    start() {
      if (this._running) return this;
      this._running = true;
      this.failures = 0;
      this.streamFailures = 0;
      this._suspended = false;
      this._listen();
      if (this._sseAvailable()) {
        this._connect();
      } else {
        this._startPolling('unsupported');
      }
      return this;
    }

    /** Close the stream and stop polling; listeners stay. */
    stop() {
      this._halt();
      this._suspended = false;
      if (typeof G.removeEventListener === 'function') {
        G.removeEventListener('pagehide', this._onPageHide);
        G.removeEventListener('pageshow', this._onPageShow);
      }
      this._setStatus('stopped', null);
      return this;
    }

    close() {
      return this.stop();
    }

    _halt() {
      this._running = false;
      this._closeStream();
      for (const name of Object.keys(this._timers)) this._clearTimer(name);
      if (typeof G.removeEventListener === 'function') G.removeEventListener('online', this._onOnline);
    }

    _listen() {
      if (typeof G.addEventListener !== 'function') return;
      G.addEventListener('online', this._onOnline);
      G.addEventListener('pagehide', this._onPageHide); // adding twice is a no-op
      G.addEventListener('pageshow', this._onPageShow);
    }

    _timer(name, delay, fn) {
      this._clearTimer(name);
      this._timers[name] = setTimeout(() => {
        delete this._timers[name];
        if (this._running) fn();
      }, delay);
    }

    _clearTimer(name) {
      if (this._timers[name] !== undefined) {
        clearTimeout(this._timers[name]);
        delete this._timers[name];
      }
    }

    _wakeUp() {
      // The browser is back online: retry now instead of at the end of the back-off.
      if (!this._running) return;
      if (this._timers.reconnect !== undefined) this._timer('reconnect', 0, () => this._connect());
      if (this._timers.poll !== undefined) this._timer('poll', 0, () => this._poll());
    }

    _unauthorized(error) {
      this._halt();
      this._setStatus('unauthorized', null, {error: error, force: true});
      this._emit('error', {error: error});
    }

    // ------------------------------------------------------------------ the stream

    _sseAvailable() {
      return this.options.useEventSource !== false &&
        typeof (this.options.EventSource || G.EventSource) === 'function';
    }

    _closeStream() {
      this._conn = null;
      this._clearTimer('open');
      if (this._es) {
        this._es.onopen = this._es.onmessage = this._es.onerror = null;
        this._es.close();
        this._es = null;
      }
    }

    async _connect() {
      if (!this._running) return;
      this._clearTimer('reconnect');
      this._closeStream();
      const conn = {opened: false, lastId: '', hadCursor: this.cursor != null};
      this._conn = conn;
      const probing = this.transport === 'polling';
      if (!probing) {
        const fresh = this.state === 'stopped' || this.state === 'unauthorized';
        this._setStatus(fresh ? 'connecting' : 'reconnecting', 'sse');
      }

      let ticket;
      try {
        ticket = await this._request('POST', '/v1/notifications/sse/ticket');
      } catch (error) {
        if (this._conn !== conn) return;
        if (error.status === 401) return this._unauthorized(error);
        // 429: wait as long as asked. At the per-user stream cap the server did answer (so polling
        // may take over); a spent connect budget, or no answer at all (server down, network):
        // polling would not help, keep backing off.
        return this._streamFailed(conn, error, error.code === 'notifications_m.too_many_connections');
      }
      if (this._conn !== conn) return;

      const EventSourceImpl = this.options.EventSource || G.EventSource;
      let source;
      try {
        source = new EventSourceImpl(this._streamUrl(ticket));
      } catch (error) {
        return this._streamFailed(conn, error, true);
      }
      this._es = source;
      this._timer('open', this.options.openTimeout, () => {
        if (this._conn === conn && !conn.opened) this._streamFailed(conn, new Error('stream open timed out'), true);
      });
      source.onopen = () => {
        if (this._conn !== conn) return;
        conn.opened = true;
        this._clearTimer('open');
        this.failures = 0;
        this.streamFailures = 0;
        const wasPolling = this.transport === 'polling';
        this._stopPolling();
        this._setStatus('live', 'sse');
        // A stream opened without a cursor starts at the newest stored notification; one poll
        // shortly after it subscribed picks up anything stored between the last look and then.
        if (!conn.hadCursor || wasPolling) this._timer('catchup', this.options.catchUpDelay, () => this._catchUp());
      };
      source.onmessage = (event) => {
        if (this._conn === conn) this._onMessage(conn, event);
      };
      for (const name of NAMED_EVENTS) {
        source.addEventListener(name, (event) => {
          if (this._conn === conn) this._onNamed(conn, name, event);
        });
      }
      source.onerror = () => {
        if (this._conn !== conn) return;
        // EventSource would retry the same URL, whose ticket is spent: take over.
        this._closeStream();
        if (conn.opened) {
          this.failures = 1;
          this._setStatus('reconnecting', 'sse');
          this._timer('reconnect', backoff(this.options.reconnectDelay, this.options.maxReconnectDelay, 1),
            () => this._connect());
        } else {
          this._streamFailed(conn, new Error('the stream could not be opened'), true);
        }
      };
    }

    _streamFailed(conn, error, restAnswered) {
      if (this._conn === conn) this._closeStream();
      if (!this._running) return;
      if (this.transport === 'polling') { // a probe while polling: try again later
        this._timer('probe', delayAfter(error, this.options.sseRetryInterval), () => this._connect());
        return;
      }
      this.failures += 1;
      if (restAnswered) this.streamFailures += 1;
      if (this.streamFailures >= this.options.sseFailureLimit) {
        this._startPolling('stream-failing', error);
        return;
      }
      this._setStatus('reconnecting', 'sse', {error: error, force: true});
      const delay = backoff(this.options.reconnectDelay, this.options.maxReconnectDelay, this.failures);
      this._timer('reconnect', delayAfter(error, delay), () => this._connect());
    }

    _streamUrl(ticket) {
      let url = ticket && ticket.stream_url ? ticket.stream_url
        : '/v1/notifications/sse?ticket=' + encodeURIComponent(ticket.ticket);
      url = this._url(url);
      const params = [];
      if (this.cursor != null) params.push('last_event_id=' + encodeURIComponent(this.cursor));
      if (this.options.customerId) params.push('customer_id=' + encodeURIComponent(this.options.customerId));
      if (params.length) url += (url.indexOf('?') >= 0 ? '&' : '?') + params.join('&');
      return url;
    }

    _advance(conn, event) {
      // lastEventId carries over to events without an `id:` line: only a change is a new cursor.
      const id = event.lastEventId;
      if (id && id !== conn.lastId) {
        conn.lastId = id;
        this.cursor = id;
        return id;
      }
      return null;
    }

    _onMessage(conn, event) {
      const cursor = this._advance(conn, event);
      let notification;
      try {
        notification = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      if (!notification || typeof notification !== 'object') return;
      this._deliver(notification, cursor, cursor === null, 'stream');
    }

    _onNamed(conn, name, event) {
      this._advance(conn, event);
      let data = {};
      try {
        data = JSON.parse(event.data || '{}') || {};
      } catch (err) {
        return;
      }
      if (name === 'unread') {
        this.lastUnread = typeof data.unread === 'number' ? data.unread : this.lastUnread;
        this._emit('unread', Object.assign({}, data, {source: 'stream'}));
      } else if (name === 'read') {
        for (const id of data.ids || []) this._setKnown(id, {read: data.read !== false});
        this._emit('read', Object.assign({}, data, {source: 'stream'}));
      } else if (name === 'deleted') {
        for (const id of data.ids || []) this._setKnown(id, {deleted: true});
        this._emit('deleted', Object.assign({}, data, {source: 'stream'}));
      } else if (name === 'ack') {
        for (const id of data.ids || []) this._setKnown(id, {read: true});
        this._emit('ack', Object.assign({}, data, {source: 'stream'}));
      } else if (name === 'reset') {
        if (data.cursor != null) this.cursor = String(data.cursor);
        this._emit('reset', Object.assign({}, data, {source: 'stream'}));
      }
    }

    _deliver(notification, cursor, direct, source) {
      const id = notification.id;
      if (id && this._known.has(id)) return; // seen already (replay after polling, a catch-up, the list)
      if (id) this._remember(notification);
      this._emit('notification', {notification: notification, cursor: cursor, direct: !!direct, source: source});
      this._systemNotify(notification).catch(() => {});
    }

    // ------------------------------------------------------------------ browser notifications

    /** A hidden tab shows a new notification as a system notification, once per id. */
    async _systemNotify(notification) {
      const doc = G.document;
      if (!this.options.systemNotifications || !doc || doc.visibilityState !== 'hidden') return;
      if (typeof G.Notification !== 'function' || G.Notification.permission !== 'granted') return;
      if (notification.id && !(await markShown(notification.id))) return;
      const options = {body: notification.content || '', tag: notification.id || undefined,
        data: {id: notification.id, link_url: notification.link_url || null}};
      const registration = G.navigator && G.navigator.serviceWorker
        ? await G.navigator.serviceWorker.getRegistration(this.options.serviceWorkerUrl) : null;
      if (registration) {
        await registration.showNotification(notification.title || '', options);
      } else {
        new G.Notification(notification.title || '', options);   // eslint-disable-line no-new
      }
    }

    /** Register the service worker that shows pushes (no subscription): its registration. */
    async registerServiceWorker() {
      if (!G.navigator || !G.navigator.serviceWorker) throw new Error('service workers are not supported here');
      // Its scope is /static/, not the page's: `serviceWorker.ready` never resolves here, so wait
      // for this registration's worker itself to be active.
      const registration = await G.navigator.serviceWorker.register(this.options.serviceWorkerUrl);
      const worker = registration.installing || registration.waiting;
      if (!registration.active && worker) {
        await new Promise((resolve) => {
          worker.addEventListener('statechange', () => { if (worker.state === 'activated') resolve(); });
        });
      }
      return registration;
    }

    /** Ask permission, subscribe this browser to Web Push and store the subscription: it, with its `id`. */
    async enablePush() {
      if (typeof G.PushManager !== 'function') throw new Error('Web Push is not supported here');
      if (await G.Notification.requestPermission() !== 'granted') throw new Error('notifications were not allowed');
      const registration = await this.registerServiceWorker();
      const key = await this._request('GET', '/v1/notifications/webpush/key');
      let subscription = await registration.pushManager.getSubscription();
      if (!subscription) {
        subscription = await registration.pushManager.subscribe({
          userVisibleOnly: true, applicationServerKey: base64UrlBytes(key.public_key)});
      }
      const saved = await this._request('POST', '/v1/notifications/webpush/subscriptions', subscription.toJSON());
      try { G.localStorage.setItem('notifications.push.id', saved.id); } catch (err) { /* private mode */ }
      return saved;
    }

    /** Delete this browser's subscription on the server, then unsubscribe it. */
    async disablePush() {
      let id = null;
      try { id = G.localStorage.getItem('notifications.push.id'); } catch (err) { /* private mode */ }
      if (id) {
        try {
          await this._request('DELETE', '/v1/notifications/webpush/subscriptions/' + encodeURIComponent(id));
        } catch (error) {
          if (!error || error.status !== 404) throw error;
        }
        try { G.localStorage.removeItem('notifications.push.id'); } catch (err) { /* private mode */ }
      }
      const registration = G.navigator && G.navigator.serviceWorker
        ? await G.navigator.serviceWorker.getRegistration(this.options.serviceWorkerUrl) : null;
      const subscription = registration && await registration.pushManager.getSubscription();
      if (subscription) await subscription.unsubscribe();
      return !!(id || subscription);
    }

    // ------------------------------------------------------------------ known ids

    _remember(notification) {
      if (!notification || !notification.id) return;
      const entry = this._known.get(notification.id) || {};
      entry.read = !!notification.read;
      this._known.delete(notification.id); // re-insert: the Map's order is the eviction order
      this._known.set(notification.id, entry);
      while (this._known.size > this.options.knownLimit) this._known.delete(this._known.keys().next().value);
      const t = timeOf(notification);
      if (t !== null && (this._newest === null || t > this._newest)) this._newest = t;
    }

    _setKnown(id, changes) {
      const entry = this._known.get(id);
      if (entry) Object.assign(entry, changes);
      else this._known.set(id, Object.assign({read: false}, changes));
    }

    // ------------------------------------------------------------------ polling

    _startPolling(reason, error) {
      this._closeStream();
      this._pollDelay = this.options.pollInterval;
      this._pollPage = null;
      this._setStatus('polling', 'polling', {reason: reason, error: error, force: true});
      this._poll();
      if (this._sseAvailable()) this._timer('probe', this.options.sseRetryInterval, () => this._connect());
    }

    _stopPolling() {
      this._clearTimer('poll');
      this._clearTimer('probe');
      this._pollPage = null;
    }

    async _poll() {
      if (!this._running || this.transport !== 'polling') return;
      try {
        await this._pollOnce();
        this._pollDelay = this.options.pollInterval;
        if (this.state !== 'polling') this._setStatus('polling', 'polling');
      } catch (error) {
        if (error.status === 401) return this._unauthorized(error);
        this._pollDelay = delayAfter(error, Math.min(this.options.maxPollInterval, this._pollDelay * 2));
        this._setStatus('polling', 'polling', {error: error, force: true});
      }
      if (!this._running || this.transport !== 'polling') return;
      const hidden = typeof document !== 'undefined' && document.hidden;
      this._timer('poll', this._pollDelay * (hidden ? this.options.hiddenPollFactor : 1), () => this._poll());
    }

    async _catchUp() {
      try {
        await this._pollOnce();
      } catch (error) {
        if (error.status === 401) this._unauthorized(error);
      }
    }

    async _pollOnce() {
      const limit = this.options.pollLimit;
      const page = await this._fetchInbox({limit: limit, offset: 0, status: 'all'});
      const items = page.items || [];
      const floor = this._newest === null ? null : this._newest - PAGE_SLACK_MS;
      const fresh = [];
      const changed = {true: [], false: []};
      for (const item of items) {
        const known = this._known.get(item.id);
        if (!known) {
          const t = timeOf(item);
          // Without a first look at the inbox every item would look new: the first poll is the baseline.
          // An unknown item much older than the newest known one moved up after a deletion: not new.
          if (this._baselined && (floor === null || t === null || t >= floor)) fresh.push(item);
          else this._remember(item);
        } else if (!known.deleted && known.read !== !!item.read) {
          changed[!!item.read].push(item.id);
          known.read = !!item.read;
        }
      }
      const deleted = [];
      if (this._pollPage) {
        const present = new Set(items.map((item) => item.id));
        const oldest = items.length ? timeOf(items[items.length - 1]) : null;
        for (const [id, t] of this._pollPage) {
          // Gone from the page while newer than its oldest item (or the page is not full): deleted.
          if (!present.has(id) && (items.length < limit || (t !== null && oldest !== null && t > oldest))) {
            const known = this._known.get(id);
            if (!known || !known.deleted) deleted.push(id);
            this._setKnown(id, {deleted: true});
          }
        }
      }
      this._pollPage = new Map(items.map((item) => [item.id, timeOf(item)]));
      this._baselined = true;
      for (const item of fresh.reverse()) this._deliver(item, null, false, 'poll'); // oldest first
      if (changed.true.length) this._emit('read', {ids: changed.true, read: true, source: 'poll'});
      if (changed.false.length) this._emit('read', {ids: changed.false, read: false, source: 'poll'});
      if (deleted.length) this._emit('deleted', {ids: deleted, source: 'poll'});
      if (typeof page.unread === 'number' && page.unread !== this.lastUnread) {
        this.lastUnread = page.unread;
        this._emit('unread', {unread: page.unread, source: 'poll'});
      }
      return page;
    }

    // ------------------------------------------------------------------ REST

    _url(path) {
      return /^[a-z][a-z0-9+.-]*:/i.test(path) ? path : this.baseUrl + path;
    }

    async _request(method, path, body, query) {
      const token = await this.options.getToken();
      const headers = {Accept: 'application/json'};
      if (token) headers.Authorization = 'Bearer ' + token;
      const init = {method: method, headers: headers, credentials: 'omit', cache: 'no-store'};
      if (body !== undefined) {
        headers['Content-Type'] = 'application/json';
        init.body = JSON.stringify(body);
      }
      let url = this._url(path);
      if (query) {
        const parts = [];
        for (const key of Object.keys(query)) {
          if (query[key] !== undefined && query[key] !== null) {
            parts.push(encodeURIComponent(key) + '=' + encodeURIComponent(query[key]));
          }
        }
        if (parts.length) url += (url.indexOf('?') >= 0 ? '&' : '?') + parts.join('&');
      }
      const fetchImpl = this.options.fetch || G.fetch.bind(G);
      let abort = null;
      if (typeof AbortController === 'function') {
        const controller = new AbortController();
        init.signal = controller.signal;
        abort = setTimeout(() => controller.abort(), this.options.requestTimeout);
      }
      let response;
      let text;
      try {
        response = await fetchImpl(url, init);
        text = await response.text();
      } catch (error) {
        throw new NotificationsError(0, null, error && error.name === 'AbortError' ? 'request timed out'
          : 'no answer from the server');
      } finally {
        if (abort !== null) clearTimeout(abort);
      }
      let data = null;
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (err) {
          data = null;
        }
      }
      if (!response.ok) {
        const retryAfter = response.status === 429 ? parseRetryAfter(response.headers.get('Retry-After')) : null;
        throw new NotificationsError(response.status, data, null, retryAfter);
      }
      return data;
    }

    _fetchInbox(params) {
      const p = Object.assign({}, params || {});
      const query = {limit: p.limit, offset: p.offset, status: p.status, ack: p.ack,
        customer_id: p.customerId !== undefined ? p.customerId : this.options.customerId};
      return this._request('GET', '/v1/notifications', undefined, query);
    }

    /** GET /v1/notifications: {items, total, unread, limit, offset}; {limit, offset, status, ack, customerId}
     * (`ack: 'pending'`: only the notices still awaiting acknowledgement). */
    async list(params) {
      const page = await this._fetchInbox(params);
      for (const item of page.items || []) this._remember(item);
      if (!params || !params.offset) this._baselined = true;
      return page;
    }

    /** {unread, ...}: GET /v1/notifications/unread-count, or the inbox's count where that is missing. */
    async unreadCount() {
      try {
        const query = this.options.customerId ? {customer_id: this.options.customerId} : undefined;
        const data = await this._request('GET', '/v1/notifications/unread-count', undefined, query);
        if (data && typeof data.unread === 'number') return data;
        if (data && typeof data.count === 'number') return Object.assign({unread: data.count}, data);
      } catch (error) {
        if ([400, 404, 405].indexOf(error.status) < 0) throw error;
      }
      const page = await this._fetchInbox({limit: 1, status: 'unread'});
      return {unread: page.unread};
    }

    async _setRead(id, read) {
      const body = read ? undefined : {read: false};
      const notification = await this._request('PATCH', '/v1/notifications/' + encodeURIComponent(id) + '/read', body);
      this._remember(notification);
      this._emit('read', {ids: [id], read: read, notification: notification, local: true});
      return notification;
    }

    /** PATCH .../read with an empty body; the updated notification. */
    markRead(id) {
      return this._setRead(id, true);
    }

    /** PATCH .../read with {"read": false}; the updated notification. */
    markUnread(id) {
      return this._setRead(id, false);
    }

    /** POST /v1/notifications/read-all: {updated}. Falls back to one PATCH per unread item. */
    async markAllRead() {
      const body = this.options.customerId ? {customer_id: this.options.customerId} : undefined;
      let result;
      try {
        result = await this._request('POST', '/v1/notifications/read-all', body);
      } catch (error) {
        if (error.status !== 404 && error.status !== 405) throw error;
        result = {updated: await this._markEachRead()};
      }
      for (const entry of this._known.values()) entry.read = true;
      const detail = Object.assign({all: true, read: true, local: true}, result || {});
      if (this.options.customerId) detail.customer_id = this.options.customerId;
      this._emit('read', detail);
      return result || {updated: 0};
    }

    async _markEachRead() {
      let updated = 0;
      for (let round = 0; round < 50; round++) {
        const page = await this._fetchInbox({limit: 200, status: 'unread'});
        const items = page.items || [];
        if (!items.length) break;
        for (const item of items) {
          await this._request('PATCH', '/v1/notifications/' + encodeURIComponent(item.id) + '/read');
          updated += 1;
        }
      }
      return updated;
    }

    /** POST /v1/notifications/{id}/ack: acknowledge a notice that requires it (`ack_required`); the
     * notification, with `acked_at` (the first one's on a repeat) and read. A notification that
     * needs no acknowledgement rejects with a NotificationsError of status 409 (`ack_not_required`). */
    async ack(id) {
      const notification = await this._request('POST', '/v1/notifications/' + encodeURIComponent(id) + '/ack');
      this._remember(notification);
      this._emit('ack', {ids: [id], acked_at: notification.acked_at, notification: notification, local: true});
      return notification;
    }

    /** DELETE /v1/notifications/{id}. */
    async remove(id) {
      await this._request('DELETE', '/v1/notifications/' + encodeURIComponent(id));
      this._setKnown(id, {deleted: true});
      this._emit('deleted', {ids: [id], local: true});
    }
  }

  NotificationsClient.NotificationsError = NotificationsError;
  NotificationsClient.defaults = DEFAULTS;
  return NotificationsClient;
}));
