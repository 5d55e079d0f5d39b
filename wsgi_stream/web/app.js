// wsgi_stream web page: live node health, the merged cluster listing, downloads, uploads.
// Plain DOM, no framework. Every name from the server goes in through textContent (el()),
// never innerHTML, so a file called <script>…</script> shows as text.
'use strict';
(function () {
  const POLL_MS = 3000;
  const state = {
    self: '', nodes: [], uploads: false, // from /api/nodes
    apiNodes: true,       // false while /api/nodes is missing: fall back on the listing
    path: '',             // current folder, also kept in location.hash
    pick: new Set(),      // nodes picked for "all nodes" ZIPs
    pickNames: '',        // node names the pickers were built for
    queue: [], uploading: false,
  };
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
  // The whole cluster when every node is picked (no ?nodes=), else only the picked ones.
  function zipUrl(path, picked, all) {
    const base = '/cluster/files/' + encodePath(path);
    const names = all.filter((n) => picked.includes(n));
    if (names.length === all.length) return base;
    return base + '?nodes=' + names.map(encodeURIComponent).join(',');
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

  async function getJSON(url) {
    const resp = await fetch(absolute(url), { cache: 'no-store', credentials: 'same-origin', headers: authHeaders() });
    const text = await resp.text();
    if (!resp.ok) {
      const err = new Error(errorMessage(resp.status, text));
      err.status = resp.status;
      throw err;
    }
    return JSON.parse(text);
  }

  // ---- nodes, polled: the server probes each peer's /healthz and reports ok/down ----
  async function pollNodes() {
    try {
      const data = await getJSON('/api/nodes');
      state.apiNodes = true;
      state.self = data.self || '';
      state.nodes = data.nodes || [];
      state.uploads = data.uploads === true;
      $('nodes-error').hidden = true;
    } catch (e) {
      if (e.status === 404 || e.status === 501) state.apiNodes = false; // older server: names come from the listing
      else { $('nodes-error').textContent = 'This node does not answer: ' + e.message; $('nodes-error').hidden = false; }
    }
    renderNodes();
    setTimeout(pollNodes, POLL_MS);
  }

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
    renderPickers();
    $('upload').hidden = !state.uploads;
  }

  // Rebuilt only when the node names change, so polling never resets a user's choice.
  function renderPickers() {
    const names = state.nodes.map((n) => n.name);
    if (names.join('/') === state.pickNames) return;
    if (!state.pickNames) names.forEach((n) => state.pick.add(n));
    state.pickNames = names.join('/');
    const box = (name, checked, cls) => el('label', {},
      el('input', { type: 'checkbox', value: name, checked: checked, className: cls }), ' ' + name);
    $('pick').replaceChildren(...names.map((n) => box(n, state.pick.has(n), 'pick')));
    $('targets').replaceChildren(...names.map((n) => box(n, n === state.self, 'target')));
    updateZipLinks();
  }

  function pickedNodes() {
    return Array.from(document.querySelectorAll('input.pick:checked')).map((i) => i.value);
  }
  function updateZipLinks() {
    const all = state.nodes.map((n) => n.name);
    for (const a of document.querySelectorAll('a[data-zip-path]')) {
      a.href = zipUrl(a.getAttribute('data-zip-path'), all.length ? pickedNodes() : [], all);
    }
  }

  // ---- the merged listing ----
  async function loadListing() {
    state.path = pathFromHash(location.hash);
    $('upload-dir').textContent = '/' + state.path;
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
    updateZipLinks();
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
      const href = isDir ? '/cluster/files/' + encodePath(entry.path) + '?nodes=' + encodeURIComponent(node)
        : fileUrl(node, entry.path);
      const link = el('a', { href, className: 'dl', title: 'download from ' + node }, '↓ ' + node);
      const info = isDir ? ' ZIP' : ' · ' + humanSize(meta.size) + ' · ' + fmtTime(meta.mtime);
      return el('span', { className: 'chip', 'data-node': node }, link, info);
    });
    return el('li', { className: isDir ? 'dir' : 'file', 'data-path': entry.path, 'data-type': entry.type },
      head, el('div', { className: 'chips' }, ...chips));
  }

  // ---- uploads: one PUT per file and node, one at a time, each with its own progress bar ----
  function startUpload(ev) {
    ev.preventDefault();
    const files = Array.from($('upload-files').files);
    const targets = Array.from(document.querySelectorAll('input.target:checked')).map((i) => i.value);
    if (!files.length || !targets.length) {
      $('uploads').prepend(el('li', { 'data-state': 'error' }, el('span', { className: 'msg' }, 'Pick at least one file and one node.')));
      return;
    }
    for (const file of files) {
      for (const node of targets) {
        const job = { file, node, dir: state.path, keep: $('upload-keep').checked, bar: el('progress', { max: 1, value: 0 }), msg: el('span', { className: 'msg' }, 'waiting') };
        job.row = el('li', { 'data-state': 'waiting', 'data-node': node, 'data-name': file.name },
          el('span', { className: 'what' }, joinPath(job.dir, file.name) + ' → ' + node), job.bar, job.msg);
        $('uploads').append(job.row);
        state.queue.push(job);
      }
    }
    $('upload-files').value = ''; // keep the chosen target nodes for the next batch
    runQueue();
  }

  async function runQueue() {
    if (state.uploading) return;
    state.uploading = true;
    while (state.queue.length) await uploadOne(state.queue.shift());
    state.uploading = false;
    loadListing(); // show the new files
  }

  function uploadOne(job) {
    const finish = (ok, text) => {
      job.row.setAttribute('data-state', ok ? 'done' : 'error');
      job.msg.textContent = text;
      if (ok) job.bar.value = 1;
    };
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open('PUT', absolute(fileUrl(job.node, joinPath(job.dir, job.file.name))));
      if (urlAuth) xhr.setRequestHeader('Authorization', urlAuth);
      if (job.keep) xhr.setRequestHeader('If-None-Match', '*'); // the node answers 412 if it exists
      job.row.setAttribute('data-state', 'sending');
      job.msg.textContent = 'sending ' + humanSize(job.file.size);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && e.total) job.bar.value = e.loaded / e.total; };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) finish(true, xhr.status === 201 ? 'stored (new file)' : 'stored (replaced)');
        else finish(false, 'refused (' + xhr.status + '): ' + errorMessage(xhr.status, xhr.responseText));
        resolve();
      };
      // A server refusing early (e.g. too large) may close the connection before answering.
      xhr.onerror = () => { finish(false, 'failed: the connection was closed (too large, or the node is down?)'); resolve(); };
      xhr.send(job.file);
    });
  }

  function init() {
    window.addEventListener('hashchange', loadListing);
    $('refresh').addEventListener('click', loadListing);
    $('pick').addEventListener('change', () => { state.pick = new Set(pickedNodes()); updateZipLinks(); });
    $('upload-form').addEventListener('submit', startUpload);
    pollNodes();
    loadListing();
  }

  // Pure helpers, exported for the tests.
  window.wsgiStream = { encodePath, pathFromHash, hashFromPath, fileUrl, zipUrl, humanSize, fmtTime, errorMessage, el };
  if ($('app')) init();
})();
