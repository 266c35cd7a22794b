// Pure rendering: each view takes the informers' current objects and returns HTML. Every value
// that comes from the API goes through esc().

export function esc(value) {
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const UNITS = { Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, k: 1e3, M: 1e6, G: 1e9, T: 1e12 };

export function bytes(quantity) {
  const m = /^([0-9.]+)([A-Za-z]*)$/.exec(String(quantity ?? '0'));
  return m ? parseFloat(m[1]) * (UNITS[m[2]] || 1) : 0;
}

export function humanBytes(n) {
  for (const [unit, size] of [['Ti', 2 ** 40], ['Gi', 2 ** 30], ['Mi', 2 ** 20]]) {
    if (n >= size) return `${+(n / size).toFixed(1)}${unit}`;
  }
  return `${n}`;
}

export function age(timestamp) {
  if (!timestamp) return '';
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(timestamp)) / 1000));
  if (s < 120) return `${s}s`;
  if (s < 7200) return `${Math.floor(s / 60)}m`;
  if (s < 172800) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

function condition(obj, type) {
  return (obj.status?.conditions || []).find((c) => c.type === type);
}

export function bar(used, total, label) {
  const pct = total > 0 ? Math.min(100, Math.round((100 * used) / total)) : 0;
  const level = pct >= 90 ? 'high' : pct >= 70 ? 'mid' : 'low';
  return `<div class="bar" title="${esc(label)}"><div class="fill ${level}" style="width:${pct}%"></div><span>${esc(label)}</span></div>`;
}

// How far a long operation has come (an object's status.progress: percent, step, message);
// empty when none is under way.
export function progressBar(progress) {
  if (!progress) return '';
  const pct = Math.max(0, Math.min(100, Math.round(Number(progress.percent) || 0)));
  const label = `${progress.step || 'Working'} ${pct}%${progress.message ? ` · ${progress.message}` : ''}`;
  return `<div class="bar progress" data-step="${esc(progress.step)}" data-percent="${pct}" title="${esc(label)}"><div class="fill run" style="width:${pct}%"></div><span>${esc(label)}</span></div>`;
}

function hostUsage(host) {
  const cap = host.status?.capacity || {};
  const alloc = host.status?.allocated || {};
  return {
    cpu: bar(alloc.cpu || 0, cap.cpu || 0, `CPU ${alloc.cpu || 0}/${cap.cpu || 0}`),
    memory: bar(bytes(alloc.memory), bytes(cap.memory), `Memory ${humanBytes(bytes(alloc.memory))}/${humanBytes(bytes(cap.memory))}`),
  };
}

function hostState(host) {
  const state = host.status?.state || 'Unknown';
  return `<span class="state ${state === 'Connected' ? 'ok' : 'bad'}">${esc(state)}</span>`;
}

export function phaseBadge(phase) {
  return `<span class="phase phase-${esc(phase || 'Created')}">${esc(phase || 'Created')}</span>`;
}

function vmIp(vm) {
  return vm.status?.nics?.[0]?.ip || '';
}

function link(vm) {
  return `#/vm/${encodeURIComponent(vm.metadata.namespace)}/${encodeURIComponent(vm.metadata.name)}`;
}

function table(headers, rows, empty = 'Nothing here yet.') {
  if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
  return `<table><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

function eventsTable(events) {
  const rows = events.map((e) => `<tr class="${e.type === 'Warning' ? 'warn' : ''}"><td>${esc(age(eventTime(e)))}</td><td>${esc(e.type)}</td><td>${esc(e.reason)}</td><td>${esc(`${e.regarding?.kind || ''}/${e.regarding?.name || ''}`)}</td><td>${esc(e.note || e.message)}</td></tr>`);
  return table(['Age', 'Type', 'Reason', 'Object', 'Message'], rows, 'No events.');
}

export function eventTime(e) {
  return e.series?.lastObservedTime || e.eventTime || e.deprecatedLastTimestamp || e.metadata.creationTimestamp;
}

export function recentEvents(events, limit) {
  return [...events].sort((a, b) => Date.parse(eventTime(b)) - Date.parse(eventTime(a))).slice(0, limit);
}

export function overview(s) {
  const byPhase = {};
  for (const vm of s.vms) byPhase[vm.status?.phase || 'Created'] = (byPhase[vm.status?.phase || 'Created'] || 0) + 1;
  const phases = Object.entries(byPhase).sort().map(([p, n]) => `<div class="count">${phaseBadge(p)}<b>${n}</b></div>`).join('');
  const down = s.hosts.filter((h) => h.status?.state !== 'Connected');
  const zones = [...s.zones].sort(byName).map((zone) => {
    const clusters = s.clusters.filter((c) => c.spec.zone === zone.metadata.name).sort(byName);
    return `<section class="zone"><h3>Zone ${esc(zone.metadata.name)}</h3>${clusters.map((c) => clusterBlock(c, s)).join('') || '<p class="empty">No clusters.</p>'}</section>`;
  });
  const known = new Set(s.clusters.map((c) => c.metadata.name));
  const orphans = s.hosts.filter((h) => !known.has(h.spec.cluster));
  if (orphans.length) zones.push(`<section class="zone"><h3>Hosts in no known cluster</h3>${hostGrid(orphans)}</section>`);
  return `
    <h2>Overview</h2>
    <div class="summary">
      <div class="card"><h4>Hosts</h4><b id="host-count">${s.hosts.length}</b>${down.length ? `<span class="bad">${down.length} not connected</span>` : ''}</div>
      <div class="card"><h4>VMs</h4><b id="vm-count">${s.vms.length}</b><div class="counts">${phases}</div></div>
      <div class="card"><h4>Capacity</h4>${capacity(s.hosts)}</div>
    </div>
    ${down.length ? `<div class="alert">Not connected: ${down.map((h) => esc(h.metadata.name)).join(', ')}</div>` : ''}
    ${zones.join('') || (s.hosts.length ? `<section class="zone"><h3>Hosts</h3>${hostGrid(s.hosts)}</section>` : '<p class="empty">No zones yet.</p>')}
    <h3>Recent events</h3>${eventsTable(recentEvents(s.events, 15))}`;
}

function capacity(hosts) {
  let cpu = 0, cpuUsed = 0, mem = 0, memUsed = 0;
  for (const h of hosts) {
    cpu += h.status?.capacity?.cpu || 0;
    cpuUsed += h.status?.allocated?.cpu || 0;
    mem += bytes(h.status?.capacity?.memory);
    memUsed += bytes(h.status?.allocated?.memory);
  }
  return bar(cpuUsed, cpu, `CPU ${cpuUsed}/${cpu}`) + bar(memUsed, mem, `Memory ${humanBytes(memUsed)}/${humanBytes(mem)}`);
}

function clusterBlock(cluster, s) {
  const hosts = s.hosts.filter((h) => h.spec.cluster === cluster.metadata.name);
  return `<div class="cluster"><h4>Cluster ${esc(cluster.metadata.name)}</h4>${hostGrid(hosts)}</div>`;
}

function hostGrid(hosts) {
  if (!hosts.length) return '<p class="empty">No hosts.</p>';
  return `<div class="hosts">${[...hosts].sort(byName).map((h) => {
    const u = hostUsage(h);
    return `<div class="host ${h.status?.state === 'Connected' ? '' : 'down'}" data-host="${esc(h.metadata.name)}"><div><b>${esc(h.metadata.name)}</b> ${hostState(h)}</div>${u.cpu}${u.memory}${progressBar(h.status?.progress)}<div class="muted">${esc(h.status?.vmCount || 0)} VMs</div></div>`;
  }).join('')}</div>`;
}

function byName(a, b) {
  return a.metadata.name.localeCompare(b.metadata.name);
}

// Search terms: plain words match names; key=value matches a label, or one of the fields
// phase, host, namespace, ip, image, offering.
export function matches(vm, query) {
  const fields = {
    phase: vm.status?.phase || 'Created',
    host: vm.status?.host || '',
    namespace: vm.metadata.namespace,
    ip: vmIp(vm),
    image: vm.spec.image,
    offering: vm.spec.instanceOffering,
  };
  return query.split(/\s+/).filter(Boolean).every((term) => {
    const eq = term.indexOf('=');
    if (eq < 0) return vm.metadata.name.includes(term);
    const [key, value] = [term.slice(0, eq), term.slice(eq + 1)];
    if (key in fields) return String(fields[key]) === value;
    return (vm.metadata.labels || {})[key] === value;
  });
}

export function vmList(s, query, phase, host) {
  const vms = s.vms.filter((vm) => matches(vm, query)
    && (!phase || (vm.status?.phase || 'Created') === phase)
    && (!host || vm.status?.host === host)).sort(byName);
  const phases = [...new Set(s.vms.map((vm) => vm.status?.phase || 'Created'))].sort();
  const hosts = [...new Set(s.vms.map((vm) => vm.status?.host).filter(Boolean))].sort();
  const option = (v, selected) => `<option ${v === selected ? 'selected' : ''} value="${esc(v)}">${esc(v || 'all')}</option>`;
  const rows = vms.map((vm) => {
    const ready = condition(vm, 'Ready');
    return `<tr data-vm="${esc(vm.metadata.namespace)}/${esc(vm.metadata.name)}"><td><a href="${link(vm)}">${esc(vm.metadata.name)}</a></td><td>${esc(vm.metadata.namespace)}</td><td>${phaseBadge(vm.status?.phase)}</td><td>${esc(vm.status?.host)}</td><td>${esc(vmIp(vm))}</td><td>${esc(age(vm.metadata.creationTimestamp))}</td><td>${esc(vm.spec.instanceOffering)}</td><td>${esc(vm.spec.image)}</td><td>${esc(vm.status?.nics?.[0]?.mac)}</td><td>${esc(ready?.reason)}</td></tr>`;
  });
  return `
    <h2>Virtual machines</h2>
    <div class="filters">
      <input id="search" placeholder="name, label=value, host=…, phase=…" value="${esc(query)}">
      <label>Phase <select id="phase">${['', ...phases].map((p) => option(p, phase)).join('')}</select></label>
      <label>Host <select id="host">${['', ...hosts].map((h) => option(h, host)).join('')}</select></label>
    </div>
    ${table(['Name', 'Namespace', 'Phase', 'Host', 'IP', 'Age', 'Offering', 'Image', 'MAC', 'Reason'], rows, 'No VMs match.')}`;
}

export function vmDetail(s, namespace, name, message) {
  const vm = s.vms.find((v) => v.metadata.namespace === namespace && v.metadata.name === name);
  if (!vm) return `<h2>${esc(namespace)}/${esc(name)}</h2><p class="empty">This VM does not exist (any more).</p>`;
  const conditions = (vm.status?.conditions || []).map((c) => `<tr><td>${esc(c.type)}</td><td>${esc(c.status)}</td><td>${esc(c.reason)}</td><td>${esc(c.message)}</td><td>${esc(age(c.lastTransitionTime))}</td></tr>`);
  const nics = (vm.status?.nics || []).map((n) => `<tr><td>${esc(n.l3Network)}</td><td>${esc(n.ip)}</td><td>${esc(n.mac)}</td></tr>`);
  const volumes = (vm.status?.volumes || []).map((v) => `<tr><td>${esc(v.name)}</td><td>${esc(v.type || '')}</td><td>${esc(v.size || '')}</td></tr>`);
  const events = s.events.filter((e) => e.regarding?.uid === vm.metadata.uid || (e.regarding?.name === name && e.regarding?.namespace === namespace));
  const halted = vm.spec.runStrategy === 'Halted';
  return `
    <h2>VM ${esc(namespace)}/${esc(name)} ${phaseBadge(vm.status?.phase)}</h2>
    <div class="actions">
      <button data-action="start" ${halted ? '' : 'disabled'}>Start</button>
      <button data-action="stop" ${halted ? 'disabled' : ''}>Stop</button>
      <button data-action="reboot" ${vm.status?.phase === 'Running' ? '' : 'disabled'}>Reboot</button>
      <button data-action="pause" ${vm.status?.phase === 'Running' ? '' : 'disabled'}>Pause</button>
      <button data-action="resume" ${vm.spec.paused ? '' : 'disabled'}>Resume</button>
      <button data-action="delete" class="danger">Delete</button>
      <span id="action-result" class="muted">${esc(message)}</span>
    </div>
    ${migrating(s, namespace, name)}
    <div class="detail">
      <div><h3>Spec</h3><pre>${esc(JSON.stringify(vm.spec, null, 2))}</pre></div>
      <div><h3>Status</h3><dl><dt>Host</dt><dd>${esc(vm.status?.host || '—')}</dd><dt>Observed generation</dt><dd>${esc(vm.status?.observedGeneration)} of ${esc(vm.metadata.generation)}</dd></dl>
      <h3>Conditions</h3>${table(['Type', 'Status', 'Reason', 'Message', 'Since'], conditions, 'No conditions yet.')}
      <h3>NICs</h3>${table(['L3 network', 'IP', 'MAC'], nics, 'No addresses yet.')}
      <h3>Volumes</h3>${table(['Name', 'Type', 'Size'], volumes, 'No volumes reported.')}</div>
    </div>
    <h3>Events</h3>${eventsTable(recentEvents(events, 50))}
    <h3>Serial console</h3>${consoleTail(s, namespace, name)}`;
}

// The agent publishes the end of the serial console in the instance's status.
function consoleTail(s, namespace, name) {
  const vmi = (s.vmis || []).find((i) => i.metadata.namespace === namespace && i.metadata.name === name);
  const tail = vmi?.status?.consoleTail;
  return tail ? `<pre id="console">${esc(tail)}</pre>` : '<p class="empty">No console output (simulated hosts keep none).</p>';
}

export function hostList(s) {
  const rows = [...s.hosts].sort(byName).map((h) => {
    const u = hostUsage(h);
    return `<tr data-host="${esc(h.metadata.name)}" class="${h.status?.state === 'Connected' ? '' : 'down'}"><td>${esc(h.metadata.name)}</td><td>${esc(h.spec.cluster)}</td><td>${hostState(h)}</td><td>${esc(h.spec.adminState)}</td><td>${u.cpu}</td><td>${u.memory}</td><td>${esc(h.status?.vmCount || 0)}</td><td>${progressBar(h.status?.progress)}</td><td>${esc(h.status?.driver)}</td><td>${esc(age(h.metadata.creationTimestamp))}</td></tr>`;
  });
  return `<h2>Hosts</h2>${table(['Name', 'Cluster', 'State', 'Admin', 'CPU', 'Memory', 'VMs', 'Drain', 'Driver', 'Age'], rows, 'No hosts.')}`;
}

export function networkList(s) {
  const rows = [...s.l3networks].sort(byName).map((n) => {
    const used = n.status?.usedIps || 0;
    const total = n.status?.totalIps || 0;
    return `<tr><td>${esc(n.metadata.name)}</td><td>${esc(n.spec.cidr)}</td><td>${esc(n.spec.gateway)}</td><td>${bar(used, total, `${used}/${total} IPs`)}</td><td>${esc(condition(n, 'Ready')?.reason)}</td></tr>`;
  });
  return `<h2>L3 networks</h2>${table(['Name', 'CIDR', 'Gateway', 'IP usage', 'Ready'], rows, 'No networks.')}`;
}

export function storageList(s, missing) {
  if (missing) return '<h2>Primary storage</h2><p class="empty">This server does not serve primary storage yet.</p>';
  const rows = [...s.primarystorages].sort(byName).map((p) => {
    const total = bytes(p.status?.capacity?.total ?? p.status?.totalCapacity);
    const avail = bytes(p.status?.capacity?.available ?? p.status?.availableCapacity);
    return `<tr><td>${esc(p.metadata.name)}</td><td>${esc(p.spec.type)}</td><td>${esc(p.spec.url || p.spec.path || '')}</td><td>${bar(total - avail, total, `${humanBytes(total - avail)}/${humanBytes(total)}`)}</td></tr>`;
  });
  const stores = [...(s.backupstorages || [])].sort(byName).map((b) => `<tr><td>${esc(b.metadata.name)}</td><td>${esc(b.spec.url)}</td><td>${esc(b.spec.adminState || 'Enabled')}</td><td>${esc(s.images.filter((i) => i.status?.backupStorage === b.metadata.name && i.status?.installUrl).length)}</td></tr>`);
  const volumes = [...(s.volumes || [])].sort(byName).map((v) => `<tr data-volume="${esc(v.metadata.namespace)}/${esc(v.metadata.name)}"><td>${esc(v.metadata.name)}</td><td>${esc(v.metadata.namespace)}</td><td>${esc(v.spec.type)}</td><td>${phaseBadge(v.status?.phase || 'Creating')}</td><td>${progressBar(v.status?.progress) || esc(condition(v, 'Ready')?.reason)}</td><td>${esc(v.status?.size || v.spec.size || '')}</td><td>${esc(v.status?.host)}</td><td>${esc(v.status?.virtualMachine)}</td></tr>`);
  return `<h2>Primary storage</h2>${table(['Name', 'Type', 'Location', 'Used'], rows, 'No primary storage.')}
    <h2>Backup storage</h2>${table(['Name', 'URL', 'Admin', 'Images stored'], stores, 'No backup storage: images are used in place from their URL.')}
    <h2>Volumes</h2>${table(['Name', 'Namespace', 'Type', 'Phase', 'Progress', 'Size', 'Host', 'VM'], volumes, 'No volumes.')}`;
}

export function imageList(s) {
  const rows = [...s.images].sort(byName).map((i) => {
    const ready = condition(i, 'Ready');
    const where = i.status?.backupStorage ? `BackupStorage ${i.status.backupStorage}` : (ready?.reason === 'UsedInPlace' ? 'in place' : '');
    return `<tr data-image="${esc(i.metadata.name)}"><td>${esc(i.metadata.name)}</td><td>${esc(i.spec.format)}</td><td>${phaseBadge(i.status?.phase || 'Pending')}</td><td>${progressBar(i.status?.progress) || `<span title="${esc(ready?.message)}">${esc(ready?.reason)}</span>`}</td><td>${esc(i.status?.size || '')}</td><td>${esc(i.status?.virtualSize || '')}</td><td>${esc(where)}</td><td>${esc(i.spec.url)}</td><td>${esc(age(i.metadata.creationTimestamp))}</td></tr>`;
  });
  return `<h2>Images</h2>${table(['Name', 'Format', 'Phase', 'Progress', 'Size', 'Virtual size', 'Stored', 'URL', 'Age'], rows, 'No images.')}`;
}

// Migrations, newest first, with the bar of the ones under way.
export function migrationList(s) {
  const rows = [...(s.migrations || [])].sort((a, b) => Date.parse(b.metadata.creationTimestamp) - Date.parse(a.metadata.creationTimestamp)).map((m) => {
    const vm = { metadata: { namespace: m.metadata.namespace, name: m.spec.virtualMachine } };
    return `<tr data-migration="${esc(m.metadata.namespace)}/${esc(m.metadata.name)}"><td>${esc(m.metadata.name)}</td><td>${esc(m.metadata.namespace)}</td><td><a href="${link(vm)}">${esc(m.spec.virtualMachine)}</a></td><td>${phaseBadge(m.status?.phase || 'Pending')}</td><td>${esc(m.status?.sourceHost)}</td><td>${esc(m.status?.targetHost || m.spec.targetHost || '')}</td><td>${progressBar(m.status?.progress) || esc(condition(m, 'Ready')?.reason)}</td><td>${esc(age(m.metadata.creationTimestamp))}</td></tr>`;
  });
  return `<h2>Migrations</h2>${table(['Name', 'Namespace', 'VM', 'Phase', 'From', 'To', 'Progress', 'Age'], rows, 'No migrations.')}`;
}

// The migration of this VM under way, if any, as a line with its bar.
function migrating(s, namespace, name) {
  const m = (s.migrations || []).find((x) => x.metadata.namespace === namespace && x.spec.virtualMachine === name
    && !['Succeeded', 'Failed'].includes(x.status?.phase));
  if (!m) return '';
  const to = m.status?.targetHost || m.spec.targetHost || 'a host the scheduler picks';
  return `<div id="vm-migration" class="card">Migrating from ${esc(m.status?.sourceHost || '…')} to ${esc(to)} ${phaseBadge(m.status?.phase || 'Pending')}${progressBar(m.status?.progress)}</div>`;
}

export function login(message) {
  return `<h2>Sign in</h2><p>Paste the bearer token from your kubeconfig (<code>users[].user.token</code>).</p>
    <form id="login"><input id="token" type="password" autocomplete="off" size="60"><button>Open</button></form>
    ${message ? `<p class="bad">${esc(message)}</p>` : ''}`;
}
