// Drives the dashboard like an operator would, in Debian's headless Chromium:
// the overview lists the hosts and VMs, a VM applied with kubectl appears and reaches Running
// without a reload, Reboot on its page is carried out, and Stop makes kubectl report it Stopped;
// an image served slowly from 127.0.0.1 shows a progress bar that moves, then Ready.
// Inputs (environment): STRATA_URL, STRATA_TOKEN, KUBECONFIG, KUBECTL, SCREENSHOTS, EXPECT_HOSTS,
// IMAGE_STORE (a directory for the BackupStorage the image is fetched into).
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';

const url = process.env.STRATA_URL;
const token = process.env.STRATA_TOKEN;
const shots = process.env.SCREENSHOTS;
const expectHosts = Number(process.env.EXPECT_HOSTS);
const timeout = 30000;
const kubectl = (args, input) =>
  execFileSync(process.env.KUBECTL || 'kubectl', args, { encoding: 'utf8', input });

const newVm = `apiVersion: strata.io/v1alpha1
kind: VirtualMachine
metadata: {name: web-1, namespace: default}
spec: {instanceOffering: small, image: tiny, nics: [{l3Network: flat-1}]}
`;

// Serves `body` at /slow.raw on 127.0.0.1, 32 KiB every 100 ms, so a 1 MiB image takes ~3 s.
async function serveSlowly(body) {
  const server = createServer((req, res) => {
    if (req.url !== '/slow.raw') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'Content-Length': body.length });
    let sent = 0;
    const timer = setInterval(() => {
      if (sent >= body.length) {
        clearInterval(timer);
        res.end();
        return;
      }
      res.write(body.subarray(sent, sent + (32 << 10)));
      sent += 32 << 10;
    }, 100);
    res.on('close', () => clearInterval(timer));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function waitForKubectl(args, expected) {
  const deadline = Date.now() + timeout;
  let last = '';
  while (Date.now() < deadline) {
    last = kubectl(args).trim();
    if (last === expected) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`kubectl ${args.join(' ')}: wanted ${expected}, last saw ${last}`);
}

mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
try {
  // The CA is the data dir's own; trusting it here is what importing it into a browser does.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  page.on('dialog', (dialog) => dialog.accept());
  page.on('pageerror', (err) => errors.push(err.message));

  console.log('overview lists the hosts and the quickstart VM');
  await page.goto(`${url}/ui/#token=${encodeURIComponent(token)}`);
  // The first load starts Chromium's renderer and every list+watch; a CI run once needed more
  // than 30 s for it next to QEMU guests booting under TCG on the same two cores.
  await page.locator('#connection', { hasText: 'live' }).waitFor({ timeout: 3 * timeout });
  for (let i = 1; i <= expectHosts; i++) await page.locator(`.host[data-host="sim-host-${i}"]`).waitFor({ timeout });
  await page.locator('#host-count', { hasText: String(expectHosts) }).waitFor({ timeout });
  await page.locator('#vm-count', { hasText: '1' }).waitFor({ timeout });
  await page.screenshot({ path: `${shots}/overview.png`, fullPage: true });

  console.log('a VM applied with kubectl appears and reaches Running without a reload');
  await page.click('a[href="#/vms"]');
  await page.locator('tr[data-vm="default/demo"]', { hasText: 'Running' }).waitFor({ timeout });
  kubectl(['apply', '-f', '-'], newVm);
  await page.locator('tr[data-vm="default/web-1"]').waitFor({ timeout });
  await page.locator('tr[data-vm="default/web-1"]', { hasText: 'Running' }).waitFor({ timeout });
  await page.screenshot({ path: `${shots}/vms.png`, fullPage: true });

  console.log('Reboot on the VM page is carried out by the host');
  await page.click('tr[data-vm="default/web-1"] a');
  await page.locator('h2', { hasText: 'default/web-1' }).waitFor({ timeout });
  await page.locator('h2 .phase', { hasText: 'Running' }).waitFor({ timeout });
  await page.click('button[data-action="reboot"]');
  await page.locator('#action-result', { hasText: 'Reboot requested' }).waitFor({ timeout });
  const asked = kubectl(['get', 'vm', 'web-1', '-o', 'jsonpath={.spec.rebootRequest}']);
  if (!asked) throw new Error('the Reboot button did not set spec.rebootRequest');
  await waitForKubectl(['get', 'vmi', 'web-1', '-o', 'jsonpath={.status.rebootRequest}'], asked);

  console.log('Stop on the VM page makes kubectl report it Stopped');
  await page.click('button[data-action="stop"]');
  await page.locator('#action-result', { hasText: 'Stop requested' }).waitFor({ timeout });
  await waitForKubectl(['get', 'vm', 'web-1', '-o', 'jsonpath={.status.phase}'], 'Stopped');
  await page.locator('h2 .phase', { hasText: 'Stopped' }).waitFor({ timeout });
  await page.screenshot({ path: `${shots}/vm-stopped.png`, fullPage: true });

  console.log('an image served slowly shows a progress bar that moves, then Ready');
  const image = Buffer.alloc(1 << 20, 0);
  for (let i = 0; i < image.length; i++) image[i] = (i * 7 + (i >> 12)) & 0xff;
  const server = await serveSlowly(image);
  try {
    await page.click('a[href="#/images"]');
    await page.locator('tr[data-image="tiny"]').waitFor({ timeout });
    const sha256 = createHash('sha256').update(image).digest('hex');
    kubectl(['apply', '-f', '-'], `apiVersion: strata.io/v1alpha1
kind: BackupStorage
metadata: {name: e2e-store}
spec: {url: "file://${process.env.IMAGE_STORE}"}
---
apiVersion: strata.io/v1alpha1
kind: Image
metadata: {name: slow}
spec: {url: "http://127.0.0.1:${server.address().port}/slow.raw", format: raw, checksum: "sha256:${sha256}", backupStorages: [e2e-store]}
`);
    const bar = page.locator('tr[data-image="slow"] .progress[data-step="Downloading"]');
    await bar.waitFor({ timeout });
    const first = Number(await bar.getAttribute('data-percent'));
    await page.waitForFunction((seen) => {
      const now = document.querySelector('tr[data-image="slow"] .progress');
      return now && Number(now.dataset.percent) > seen;
    }, first, { timeout });
    await page.screenshot({ path: `${shots}/image-progress.png`, fullPage: true });
    await page.locator('tr[data-image="slow"] .phase', { hasText: 'Ready' }).waitFor({ timeout });
    if (await page.locator('tr[data-image="slow"] .progress').count()) throw new Error('a Ready image still shows a progress bar');
    await waitForKubectl(['get', 'image', 'slow', '-o', 'jsonpath={.status.checksum}'], `sha256:${sha256}`);
    await page.screenshot({ path: `${shots}/image-ready.png`, fullPage: true });
  } finally {
    server.close();
  }
  if (errors.length) throw new Error(`the page threw: ${errors.join('; ')}`);
  console.log('dashboard: all checks passed');
} catch (err) {
  // Leave a picture of what the operator would have seen.
  for (const page of browser.contexts().flatMap((c) => c.pages())) {
    await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
    console.log(`page text at failure:\n${await page.innerText('body').catch(() => '')}`);
  }
  throw err;
} finally {
  await browser.close();
}
