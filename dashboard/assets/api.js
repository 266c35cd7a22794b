// The console's only way to the control plane: the Kubernetes API, with the user's bearer token.
// An Informer keeps one collection current the way client-go's does: list, then watch from the
// list's resourceVersion, re-list when the server says 410 Expired, reconnect when a watch ends.

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.reason = body && body.reason;
  }
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  headers(extra = {}) {
    return { Authorization: `Bearer ${this.token}`, Accept: 'application/json', ...extra };
  }

  async request(method, path, body, contentType = 'application/json') {
    const init = { method, headers: this.headers(body ? { 'Content-Type': contentType } : {}) };
    if (body) init.body = JSON.stringify(body);
    const response = await fetch(path, init);
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    if (!response.ok) throw new ApiError(response.status, json);
    return json;
  }

  get(path) {
    return this.request('GET', path);
  }

  mergePatch(path, patch) {
    return this.request('PATCH', path, patch, 'application/merge-patch+json');
  }

  delete(path) {
    return this.request('DELETE', path, { propagationPolicy: 'Background' });
  }
}

export class Informer {
  constructor(api, path, onChange) {
    this.api = api;
    this.path = path;
    this.onChange = onChange;
    this.items = new Map();
    this.synced = false;
    this.missing = false;
    this.stopped = false;
  }

  list() {
    return [...this.items.values()];
  }

  stop() {
    this.stopped = true;
    if (this.abort) this.abort.abort();
  }

  async run() {
    let rv = null;
    while (!this.stopped) {
      try {
        if (rv === null) rv = await this.relist();
        rv = await this.watch(rv);
      } catch (err) {
        if (err instanceof ApiError && err.status === 404) {
          // The kind is not served (yet); show it as absent and look again later.
          this.missing = true;
          this.onChange(this);
          await sleep(10000);
        } else if (err.expired) {
          rv = null;
        } else if (!this.stopped) {
          await sleep(1000);
        }
      }
    }
  }

  async relist() {
    const list = await this.api.get(this.path);
    this.items = new Map(list.items.map((o) => [o.metadata.uid, o]));
    this.synced = true;
    this.missing = false;
    this.onChange(this);
    return list.metadata.resourceVersion;
  }

  // Streams watch events until the server ends the watch; returns the resourceVersion to resume from.
  async watch(rv) {
    this.abort = new AbortController();
    const url = `${this.path}?watch=true&allowWatchBookmarks=true&timeoutSeconds=240&resourceVersion=${rv}`;
    const response = await fetch(url, { headers: this.api.headers(), signal: this.abort.signal });
    if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return rv;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) rv = this.apply(JSON.parse(line), rv);
      }
    }
  }

  apply(event, rv) {
    const object = event.object;
    if (event.type === 'ERROR') {
      const err = new Error(object.message);
      err.expired = object.code === 410;
      throw err;
    }
    if (event.type === 'DELETED') this.items.delete(object.metadata.uid);
    else if (event.type !== 'BOOKMARK') this.items.set(object.metadata.uid, object);
    if (event.type !== 'BOOKMARK') this.onChange(this);
    return object.metadata.resourceVersion || rv;
  }
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
