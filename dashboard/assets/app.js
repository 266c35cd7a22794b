// Wires informers to views: every collection is kept current by list + watch, and any change
// re-renders the current view (at most once per animation frame).
import { Api, Informer } from './api.js';
import * as views from './views.js';

const GROUP = '/apis/strata.io/v1alpha1';
const COLLECTIONS = {
  zones: `${GROUP}/zones`,
  clusters: `${GROUP}/clusters`,
  hosts: `${GROUP}/hosts`,
  vms: `${GROUP}/virtualmachines`,
  vmis: `${GROUP}/virtualmachineinstances`,
  l3networks: `${GROUP}/l3networks`,
  images: `${GROUP}/images`,
  primarystorages: `${GROUP}/primarystorages`,
  backupstorages: `${GROUP}/backupstorages`,
  volumes: `${GROUP}/volumes`,
  migrations: `${GROUP}/virtualmachinemigrations`,
  events: '/apis/events.k8s.io/v1/events',
};

const main = document.getElementById('main');
const ui = { query: '', phase: '', host: '', message: '' };
let lastHtml = '';
let api = null;
let informers = {};
let scheduled = false;

function token() {
  // `strata up` prints a URL with the token in the fragment, which never reaches any server log.
  const m = /^#token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem('strata-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', `${location.pathname}#/overview`);
  }
  return sessionStorage.getItem('strata-token');
}

function state() {
  const s = {};
  for (const [name, informer] of Object.entries(informers)) s[name] = informer.list();
  return s;
}

function render() {
  scheduled = false;
  if (!api) return;
  const s = state();
  const [, view, ...rest] = (location.hash || '#/overview').slice(1).split('/');
  const focused = document.activeElement && document.activeElement.id === 'search';
  const html = {
    vms: () => views.vmList(s, ui.query, ui.phase, ui.host),
    vm: () => views.vmDetail(s, decodeURIComponent(rest[0] || ''), decodeURIComponent(rest[1] || ''), ui.message),
    hosts: () => views.hostList(s),
    networks: () => views.networkList(s),
    storage: () => views.storageList(s, informers.primarystorages.missing),
    images: () => views.imageList(s),
    migrations: () => views.migrationList(s),
  }[view] || (() => views.overview(s));
  const next = html();
  // Replacing identical markup would only steal clicks and focus from the operator.
  if (next !== lastHtml) {
    main.innerHTML = next;
    lastHtml = next;
  }
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.getAttribute('href') === `#/${view || 'overview'}`);
  const synced = Object.values(informers).every((i) => i.synced || i.missing);
  document.getElementById('connection').textContent = synced ? 'live' : 'syncing…';
  if (focused) {
    const search = document.getElementById('search');
    search.focus();
    search.setSelectionRange(search.value.length, search.value.length);
  }
}

function schedule() {
  if (!scheduled) {
    scheduled = true;
    requestAnimationFrame(render);
  }
}

async function act(action) {
  const [, , namespace, name] = location.hash.slice(1).split('/').map(decodeURIComponent);
  const path = `${GROUP}/namespaces/${encodeURIComponent(namespace)}/virtualmachines/${encodeURIComponent(name)}`;
  const verbs = { start: 'Start', stop: 'Stop', reboot: 'Reboot', pause: 'Pause', resume: 'Resume', delete: 'Delete' };
  if (!confirm(`${verbs[action]} VM ${namespace}/${name}?`)) return;
  try {
    // Actions are spec changes through the API, exactly what kubectl would send.
    if (action === 'start') await api.mergePatch(path, { spec: { runStrategy: 'Always' } });
    if (action === 'stop') await api.mergePatch(path, { spec: { runStrategy: 'Halted' } });
    // Any new value asks for one reboot, as `kubectl rollout restart` stamps a time.
    if (action === 'pause') await api.mergePatch(path, { spec: { paused: true } });
    if (action === 'resume') await api.mergePatch(path, { spec: { paused: false } });
    if (action === 'reboot') await api.mergePatch(path, { spec: { rebootRequest: new Date().toISOString() } });
    if (action === 'delete') await api.delete(path);
    ui.message = `${verbs[action]} requested`;
  } catch (err) {
    ui.message = `${verbs[action]} failed: ${err.message}`;
  }
  schedule();
}

main.addEventListener('click', (e) => {
  const button = e.target.closest('button[data-action]');
  if (button) act(button.dataset.action);
});

main.addEventListener('input', (e) => {
  if (e.target.id === 'search') ui.query = e.target.value;
  if (e.target.id === 'phase') ui.phase = e.target.value;
  if (e.target.id === 'host') ui.host = e.target.value;
  schedule();
});

main.addEventListener('submit', (e) => {
  if (e.target.id !== 'login') return;
  e.preventDefault();
  sessionStorage.setItem('strata-token', document.getElementById('token').value.trim());
  start();
});

window.addEventListener('hashchange', () => {
  ui.message = '';
  schedule();
});
setInterval(schedule, 10000); // ages tick even when nothing changes

async function start() {
  const t = token();
  if (!t) {
    main.innerHTML = views.login();
    return;
  }
  api = new Api(t);
  try {
    await api.get('/version');
    await api.get(COLLECTIONS.hosts);
  } catch (err) {
    api = null;
    sessionStorage.removeItem('strata-token');
    main.innerHTML = views.login(`The API refused the token: ${err.message}`);
    return;
  }
  for (const informer of Object.values(informers)) informer.stop();
  informers = {};
  for (const [name, path] of Object.entries(COLLECTIONS)) {
    informers[name] = new Informer(api, path, schedule);
    informers[name].run();
  }
  schedule();
}

start();
