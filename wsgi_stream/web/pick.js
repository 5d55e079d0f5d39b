// wsgi_stream web page: what goes in "all nodes" ZIPs. The nodes, the time (last hour / today /
// all) and name patterns, carried by every ZIP link as ?nodes=, ?since=, ?glob=; a preview of
// what the folder's ZIP would hold; and a check before each ZIP download, so that an empty
// selection or a failed plan is a message on the page, not a JSON page instead of a download.
'use strict';
(function () {
  const ws = window.wsgiStream;
  const { el, $, state } = ws;
  const PREVIEW_DELAY_MS = 300;
  const pick = new Set();   // nodes picked for "all nodes" ZIPs
  let built = false;        // every node is picked the first time the names are known
  let previewSeq = 0;       // only the newest preview is shown
  let previewTimer = null;
  let previewAbort = null;

  // Shell patterns from the box, separated by spaces or commas ('*.log, *.txt').
  function parsePatterns(text) { return String(text || '').split(/[\s,]+/).filter(Boolean); }

  // The start of the local day of `now` (ms) as RFC 3339 with this browser's offset ('…T00:00:00+05:30').
  function midnight(now) {
    const d = new Date(now);
    d.setHours(0, 0, 0, 0); // where a DST change skips midnight, this is the day's first moment
    const p = (x) => String(x).padStart(2, '0');
    const off = -d.getTimezoneOffset();
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) + ':' +
      p(d.getMinutes()) + ':00' + (off < 0 ? '-' : '+') + p(Math.floor(Math.abs(off) / 60)) + ':' + p(Math.abs(off) % 60);
  }

  // The selection as encoded query parameters; `since` is '' (all), '1h' or 'today'.
  function selectionParams(since, patterns, now) {
    const params = patterns.map((g) => 'glob=' + encodeURIComponent(g));
    if (since === 'today') params.push('since=' + encodeURIComponent(midnight(now)));
    else if (since) params.push('since=' + encodeURIComponent(since));
    return params;
  }

  // What the selection says, for messages: 'is named *.log or *.txt and was changed today'.
  function describe(since, patterns) {
    const parts = patterns.length ? ['is named ' + patterns.join(' or ')] : [];
    if (since) parts.push('was changed ' + (since === 'today' ? 'today' : 'in the last hour'));
    return parts.join(' and ');
  }

  function chosen() {
    const since = (document.querySelector('input[name="since"]:checked') || {}).value || '';
    return { since, patterns: parsePatterns($('pattern').value) };
  }

  // A node's folder chip names its node; the others follow the node picker.
  function hrefFor(a, sel, now) {
    const all = state.nodes.map((n) => n.name);
    const params = selectionParams(sel.since, sel.patterns, now);
    const node = a.getAttribute('data-zip-node');
    if (node) return ws.zipUrl(a.getAttribute('data-zip-path'), [], [], ['nodes=' + encodeURIComponent(node)].concat(params));
    return ws.zipUrl(a.getAttribute('data-zip-path'), all.length ? Array.from(pick) : [], all, params);
  }

  function updateLinks() {
    const sel = chosen();
    for (const a of document.querySelectorAll('a[data-zip-path]')) a.href = hrefFor(a, sel, Date.now());
  }

  function renderPicker() {
    const names = state.nodes.map((n) => n.name);
    if (!built && names.length) { names.forEach((n) => pick.add(n)); built = true; }
    $('pick').replaceChildren(...names.map((name) => el('label', {},
      el('input', { type: 'checkbox', value: name, checked: pick.has(name), className: 'pick' }), ' ' + name)));
  }

  function changed() { updateLinks(); schedulePreview(); }

  // ---- the preview: each picked node's recursive listing of this folder, with the selection ----
  function schedulePreview() {
    clearTimeout(previewTimer);
    previewTimer = setTimeout(preview, PREVIEW_DELAY_MS);
  }

  async function countOn(node, query, signal) {
    try {
      const data = await ws.getJSON('/nodes/' + encodeURIComponent(node) + '/list/' + ws.encodePath(state.path) + '?' + query, { signal });
      const files = (data.entries || []).filter((e) => e.type !== 'dir');
      return { node, count: files.length, size: files.reduce((sum, e) => sum + (e.size || 0), 0) };
    } catch (e) {
      return { node, error: e };
    }
  }

  async function preview() {
    const out = $('pick-preview');
    const sel = chosen();
    const seq = ++previewSeq;
    if (previewAbort) previewAbort.abort();
    if (!sel.since && !sel.patterns.length) { out.replaceChildren(); out.hidden = true; return; }
    previewAbort = new AbortController();
    out.hidden = false;
    out.setAttribute('data-state', 'counting');
    out.textContent = 'Counting…';
    const query = ['recursive=1'].concat(selectionParams(sel.since, sel.patterns, Date.now())).join('&');
    const names = state.nodes.map((n) => n.name).filter((n) => pick.has(n));
    const results = await Promise.all(names.map((n) => countOn(n, query, previewAbort.signal)));
    if (seq !== previewSeq) return; // the user changed something meanwhile
    renderPreview(out, results, sel);
  }

  function renderPreview(out, results, sel) {
    const folder = '/' + state.path;
    const refused = results.find((r) => r.error && r.error.status === 400); // the same for every node
    if (refused) {
      out.setAttribute('data-state', 'error');
      out.replaceChildren(el('span', { className: 'error' }, 'Not a usable selection: ' + refused.error.message));
      return;
    }
    const ok = results.filter((r) => !r.error || r.error.code === 'not_found');
    const count = ok.reduce((sum, r) => sum + (r.count || 0), 0);
    const size = ok.reduce((sum, r) => sum + (r.size || 0), 0);
    const total = count
      ? el('span', { className: 'total', 'data-count': count },
        'Picked below ' + folder + ': ' + count + (count === 1 ? ' file, ' : ' files, ') + ws.humanSize(size) + ' —')
      : el('span', { className: 'total warn', 'data-count': 0 },
        'No file below ' + folder + ' ' + describe(sel.since, sel.patterns) + ': nothing to download.');
    const perNode = results.map((r) => el('span', { className: 'per-node', 'data-node': r.node },
      r.node + ': ' + (r.error && r.error.code !== 'not_found' ? 'not asked (' + r.error.message + ')' : (r.count || 'none'))));
    out.setAttribute('data-state', count ? 'some' : 'none');
    out.replaceChildren(total, ...perNode);
  }

  // ---- the check before a ZIP download: plan it with HEAD; on an error show why, next to the link ----
  function note(a, text, cls) {
    let span = a.nextElementSibling;
    if (!span || !span.classList.contains('zip-msg')) {
      span = el('span', { className: 'zip-msg', role: 'status' });
      a.after(span);
    }
    span.className = 'zip-msg ' + cls;
    span.textContent = text;
    return span;
  }

  // Why `url` cannot be downloaded: the error answer of a GET (HEAD answers have no body), or null
  // if it can be after all (something changed since the HEAD).
  async function reason(url, headError) {
    const ctl = new AbortController();
    try {
      await ws.request(url, { signal: ctl.signal });
      ctl.abort();
      return null;
    } catch (e) {
      return e.status ? e : headError;
    }
  }

  async function onZipClick(ev) {
    const a = ev.target.closest && ev.target.closest('a[data-zip-path]');
    if (!a || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey) return;
    if (a.getAttribute('data-checked') === a.href) { a.removeAttribute('data-checked'); return; } // checked: download
    ev.preventDefault();
    const sel = chosen();
    a.href = hrefFor(a, sel, Date.now()); // 'today' moves on at midnight
    const url = a.getAttribute('href');
    const span = note(a, 'preparing the ZIP…', 'busy');
    try {
      await ws.request(url, { method: 'HEAD' });
    } catch (e) {
      const why = await reason(url, e);
      if (why) {
        const path = '/' + a.getAttribute('data-zip-path');
        note(a, why.code === 'nothing_selected'
          ? 'Nothing to download: no file in ' + path + ' ' + (describe(sel.since, sel.patterns) || 'matches') + '.'
          : 'Cannot download: ' + why.message, 'error');
        return;
      }
    }
    span.remove();
    a.setAttribute('data-checked', a.href);
    a.click();
  }

  ws.hooks.init.push(() => {
    $('pick').addEventListener('change', () => {
      pick.clear();
      document.querySelectorAll('input.pick:checked').forEach((i) => pick.add(i.value));
      changed();
    });
    $('since').addEventListener('change', changed);
    $('pattern').addEventListener('input', changed);
    document.addEventListener('click', onZipClick);
  });
  ws.hooks.nodes.push((namesChanged) => { if (namesChanged) { renderPicker(); changed(); } });
  ws.hooks.listing.push(changed);

  Object.assign(ws, { parsePatterns, midnight, selectionParams, describe });
})();
