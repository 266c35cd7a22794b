// Drives the dashboard like an operator would, in Debian's headless Chromium:
// the overview lists the hosts and VMs, a VM applied with kubectl appears and reaches Running
// without a reload, Reboot on its page is carried out, and Stop makes kubectl report it Stopped.
// Inputs (environment): STRATA_URL, STRATA_TOKEN, KUBECONFIG, KUBECTL, SCREENSHOTS, EXPECT_HOSTS.
import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';

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
  await page.locator('#connection', { hasText: 'live' }).waitFor({ timeout });
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
