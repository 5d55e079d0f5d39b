// wsgi_stream web page, core: helpers, live node health, the merged cluster listing.
// pick.js (what goes in ZIPs) and upload.js (uploads) plug in through window.wsgiStream.hooks.
// Plain DOM, no framework. Every name from the server goes in through textContent (el()),
// never innerHTML, so a file called <script>…</script> shows as text.
'use strict';
(function () {
  const POLL_MS = 3000;
  const state = {
    self: '', nodes: [], uploads: false, // from /api/nodes
    fanout: false,        // does this node take PUT /cluster/files (one upload to every node)?
    fanoutProbed: false,
    apiNodes: true,       // false while /api/nodes is missing: fall back on the listing
    path: '',             // current folder, also kept in location.hash
  };
  // Other scripts' reactions: init() once, nodes(namesChanged) after each poll, listing() after each load.
  const hooks = { init: [], nodes: [], listing: [] };
  const emit = (name, ...args) => hooks[name].forEach((fn) => fn(...args));
  const $ = (id) => document.getElementById(id);

  // el('a', {href: u, className: 'x'}, 'text', child): strings become text nodes.
  function el(tag, props, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k.startsWith('data-')) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const kid of kids) {
      if (kid !== null && kid !== undefined) node.append(kid);
    }
    return node;
  }

  // Each segment percent-encoded on its own, so '/' stays a separator and '#', '?', '%' don't.
  function encodePath(path) {
    return String(path).split('/').filter(Boolean).map(encodeURIComponent).join('/');
  }
  function joinPath(dir, name) { return dir ? dir + '/' + name : name; }
  function pathFromHash(hash) {
    const segs = String(hash || '').replace(/^#\/?/, '').split('/').filter(Boolean);
    return segs.map((s) => { try { return decodeURIComponent(s); } catch (e) { return s; } }).join('/');
  }
  function hashFromPath(path) { return '#/' + encodePath(path); }
  function fileUrl(node, path) { return '/nodes/' + encodeURIComponent(node) + '/files/' + encodePath(path); }
  // The whole cluster when every node is picked (no ?nodes=), else only the picked ones; `extra`
  // are more query parameters, already encoded ('glob=*.log').
  function zipUrl(path, picked, all, extra) {
    const names = all.filter((n) => picked.includes(n));
    const query = (names.length === all.length ? [] : ['nodes=' + names.map(encodeURIComponent).join(',')])
      .concat(extra || []);
    return '/cluster/files/' + encodePath(path) + (query.length ? '?' + query.join('&') : '');
  }

  function humanSize(n) {
    if (typeof n !== 'number' || !isFinite(n)) return '?';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
  }
  function fmtTime(mtime) {
    if (typeof mtime !== 'number') return '';
    const d = new Date(mtime * 1000);
    const p = (x) => String(x).padStart(2, '0');
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' + p(d.getHours()) + ':' + p(d.getMinutes());
  }
  // Error bodies are {"error", "message"}; anything else (a proxy's HTML page) gets the status.
  function errorMessage(status, text) {
    try {
      const body = JSON.parse(text);
      if (body && body.message) return body.message;
    } catch (e) { /* not JSON */ }
    return status ? 'HTTP ' + status : 'network error (connection closed)';
  }
  function errorCode(text) {
    try { return JSON.parse(text).error || ''; } catch (e) { return ''; }
  }

  // Opened as http://user:token@host/, the page's own URL holds the credentials, and Chromium refuses
  // to build a request from a URL that includes them: requests go to the bare origin and carry the
  // credentials as a header instead.
  const pageUrl = new URL(location.href);
  const urlAuth = pageUrl.username || pageUrl.password
    ? 'Basic ' + btoa(unescape(encodeURIComponent(
        decodeURIComponent(pageUrl.username) + ':' + decodeURIComponent(pageUrl.password))))
    : null;
  function absolute(path) { return location.origin + path; }
  function authHeaders() { return urlAuth ? { Authorization: urlAuth } : {}; }

  // fetch() with the page's credentials; rejects with .status and .code for an error answer.
  async function request(url, options) {
    const resp = await fetch(absolute(url), Object.assign(
      { cache: 'no-store', credentials: 'same-origin', headers: authHeaders() }, options || {}));
    if (resp.ok) return resp;
    const text = await resp.text();
    const err = new Error(errorMessage(resp.status, text));
    err.status = resp.status;
    err.code = errorCode(text);
    throw err;
  }
  async function getJSON(url, options) { return (await request(url, options)).json(); }

  // ---- nodes, polled: the server probes each peer's /healthz and reports ok/down ----
  async function pollNodes() {
    try {
      const data = await getJSON('/api/nodes');
      state.apiNodes = true;
      state.self = data.self || '';
      state.nodes = data.nodes || [];
      state.uploads = data.uploads === true;
      state.fanout = state.uploads && data.fanout === true;
      $('nodes-error').hidden = true;
    } catch (e) {
      if (e.status === 404 || e.status === 501) state.apiNodes = false; // older server: names come from the listing
      else { $('nodes-error').textContent = 'This node does not answer: ' + e.message; $('nodes-error').hidden = false; }
    }
    renderNodes();
    setTimeout(pollNodes, POLL_MS);
  }

  let shownNames = null;
  function renderNodes() {
    $('self').textContent = state.self ? 'node ' + state.self : '';
    const items = state.nodes.map((n) => {
      const status = n.status || 'unknown';
      return el('li', { 'data-node': n.name, 'data-status': status, title: n.message || '' },
        el('span', { className: 'dot' }), el('strong', {}, n.name),
        n.name === state.self ? el('span', { className: 'muted' }, ' (this node)') : null,
        el('span', { className: 'state' }, status),
        n.url ? el('span', { className: 'url' }, n.url) : null);
    });
    $('nodes').replaceChildren(...items);
    const names = state.nodes.map((n) => n.name).join('/');
    emit('nodes', names !== shownNames); // pickers are rebuilt only when the names change
    shownNames = names;
  }

  // ---- the merged listing ----
  async function loadListing() {
    state.path = pathFromHash(location.hash);
    renderCrumbs();
    $('list-status').textContent = 'Loading…';
    try {
      const data = await getJSON('/cluster/list/' + encodePath(state.path));
      if (pathFromHash(location.hash) !== state.path) return; // the user moved on meanwhile
      renderListing(data);
    } catch (e) {
      $('entries').replaceChildren();
      $('folder-actions').replaceChildren();
      $('list-status').replaceChildren(el('span', { className: 'error' }, 'Cannot list /' + state.path + ': ' + e.message));
    }
    emit('listing');
  }

  function renderCrumbs() {
    const parts = [el('a', { href: '#/' }, 'all files')];
    const segs = state.path ? state.path.split('/') : [];
    segs.forEach((seg, i) => {
      parts.push(el('span', { className: 'sep' }, '/'));
      parts.push(el('a', { href: hashFromPath(segs.slice(0, i + 1).join('/')) }, seg));
    });
    $('crumbs').replaceChildren(...parts);
  }

  function nodeOrder(data) {
    const known = state.nodes.map((n) => n.name);
    const extra = Object.keys(data.nodes || {}).filter((n) => !known.includes(n));
    return known.concat(extra);
  }

  function renderListing(data) {
    const order = nodeOrder(data);
    if (!state.apiNodes) { // no /api/nodes: show what the listing says about each node
      state.nodes = order.map((name) => ({ name, status: ((data.nodes || {})[name] || {}).status === 'error' ? 'down' : 'ok' }));
      renderNodes();
    }
    const statuses = order.filter((n) => data.nodes && data.nodes[n]).map((n) => {
      const st = data.nodes[n];
      const text = n + ': ' + st.status + (st.message ? ' — ' + st.message : '');
      return el('span', { className: 'st-' + st.status, 'data-node': n }, text);
    });
    $('list-status').replaceChildren(...statuses);
    $('folder-actions').replaceChildren(el('a', { className: 'zip-all', 'data-zip-path': state.path },
      state.path ? 'Download this folder from all nodes (ZIP)' : 'Download everything from all nodes (ZIP)'));
    const entries = (data.entries || []).map((e) => renderEntry(e, order));
    if (!entries.length) entries.push(el('li', { className: 'empty' }, 'This folder is empty.'));
    $('entries').replaceChildren(...entries);
  }

  function renderEntry(entry, order) {
    const isDir = entry.type === 'dir';
    const name = isDir
      ? el('a', { href: hashFromPath(entry.path) }, entry.name + '/')
      : el('span', {}, entry.name);
    // ETags embed each machine's inode, so only sizes tell copies apart for sure.
    const sizes = new Set(Object.values(entry.nodes || {}).map((m) => m.size).filter((n) => n !== undefined));
    const head = el('div', { className: 'entry-head' },
      el('span', { className: 'name' }, el('span', { className: 'icon' }), name),
      sizes.size > 1 ? el('span', { className: 'differs', title: 'the copies are not identical' }, 'sizes differ') : null,
      el('a', { className: 'zip-all', 'data-zip-path': entry.path }, 'Download from all nodes (ZIP)'));
    const chips = order.map((node) => {
      const meta = (entry.nodes || {})[node];
      if (!meta) return el('span', { className: 'chip absent', 'data-node': node, title: 'not on ' + node }, node);
      // A folder from one node is that node's part of the cluster ZIP (/files/ serves files only).
      const link = isDir
        ? el('a', { className: 'dl', title: 'ZIP from ' + node, 'data-zip-path': entry.path, 'data-zip-node': node }, '↓ ' + node)
        : el('a', { href: fileUrl(node, entry.path), className: 'dl', title: 'download from ' + node }, '↓ ' + node);
      const info = isDir ? ' ZIP' : ' · ' + humanSize(meta.size) + ' · ' + fmtTime(meta.mtime);
      return el('span', { className: 'chip', 'data-node': node }, link, info);
    });
    return el('li', { className: isDir ? 'dir' : 'file', 'data-path': entry.path, 'data-type': entry.type },
      head, el('div', { className: 'chips' }, ...chips));
  }

  function init() {
    emit('init');
    window.addEventListener('hashchange', loadListing);
    $('refresh').addEventListener('click', loadListing);
    pollNodes();
    loadListing();
  }

  // Helpers for pick.js and upload.js, and pure ones for the tests.
  window.wsgiStream = {
    encodePath, pathFromHash, hashFromPath, fileUrl, zipUrl, joinPath, humanSize, fmtTime, errorMessage,
    errorCode, el, $, state, hooks, absolute, urlAuth, request, getJSON, loadListing,
  };
  // Deferred scripts all run before DOMContentLoaded: pick.js and upload.js have hooked in by then.
  // (A page that loaded already, such as the tests' blank one, only gets the helpers.)
  if (document.readyState !== 'complete') document.addEventListener('DOMContentLoaded', () => { if ($('app')) init(); });
})();
