// wsgi_stream web page: uploads. "Upload" sends each file to each picked node, one PUT at a time,
// each with its own progress bar. "Upload to all nodes" (on nodes with fan-out) sends each file
// once, to PUT /cluster/files: this node passes it on to every node, stages it everywhere and
// commits it everywhere (or, best-effort, wherever it could); the answer has one line per node.
'use strict';
(function () {
  const ws = window.wsgiStream;
  const { el, $, state } = ws;
  const PROGRESS_MS = 500;
  const queue = [];
  let running = false;

  // An id for PUT /cluster/files?id= (8 to 64 letters, digits, '-', '_'), to ask for its progress.
  function uploadId() {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    return 'web-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  }
  function fanoutUrl(path, mode, id) {
    return '/cluster/files/' + ws.encodePath(path) + '?mode=' + encodeURIComponent(mode) + '&id=' + encodeURIComponent(id);
  }

  // One node's line of a fan-out: while it runs its state and bytes (of `length`), at the end its outcome.
  function lineText(line, length) {
    if (line.status === 'committed') return 'committed' + (line.created ? ' (new file)' : ' (replaced)');
    if (line.status) return line.status + (line.message ? ' — ' + line.message : '');
    const bytes = line.bytes ? ' · ' + ws.humanSize(line.bytes) + (length ? ' of ' + ws.humanSize(length) : '') : '';
    return line.state + bytes + (line.message ? ' — ' + line.message : '');
  }

  function enqueue(toAll) {
    const files = Array.from($('upload-files').files);
    const targets = Array.from(document.querySelectorAll('input.target:checked')).map((i) => i.value);
    if (!files.length || (!toAll && !targets.length)) {
      $('uploads').prepend(el('li', { 'data-state': 'error' }, el('span', { className: 'msg' }, 'Pick at least one file and one node.')));
      return;
    }
    const mode = (document.querySelector('input[name="fanout-mode"]:checked') || {}).value || 'atomic';
    const keep = $('upload-keep').checked;
    for (const file of files) {
      if (toAll) queue.push(fanoutJob(file, state.path, keep, mode));
      else targets.forEach((node) => queue.push(nodeJob(file, state.path, keep, node)));
    }
    $('upload-files').value = ''; // keep the chosen target nodes for the next batch
    run();
  }

  function job(file, dir, keep, props, what, ...extra) {
    const j = Object.assign({ file, dir, keep, bar: el('progress', { max: 1, value: 0 }), msg: el('span', { className: 'msg' }, 'waiting') }, props);
    j.row = el('li', Object.assign({ 'data-state': 'waiting', 'data-name': file.name }, j.attrs),
      el('span', { className: 'what' }, ws.joinPath(dir, file.name) + ' → ' + what), j.bar, j.msg, ...extra);
    $('uploads').append(j.row);
    return j;
  }

  function nodeJob(file, dir, keep, node) {
    return job(file, dir, keep, { node, attrs: { 'data-node': node } }, node);
  }

  function fanoutJob(file, dir, keep, mode) {
    const lines = el('ul', { className: 'fan-nodes' });
    const j = job(file, dir, keep, { mode, lines, id: uploadId(), attrs: { 'data-fanout': mode } },
      'all nodes' + (mode === 'atomic' ? ' (all or nothing)' : ' (as many as possible)'), lines);
    showLines(j, Object.fromEntries(state.nodes.map((n) => [n.name, { state: 'waiting' }])), null);
    return j;
  }

  // Rows per node, kept across updates (so their bars don't flicker): a bar of bytes and a text.
  function showLines(j, nodes, length) {
    for (const [name, line] of Object.entries(nodes || {})) {
      let li = j.lines.querySelector('li[data-node="' + CSS.escape(name) + '"]');
      if (!li) {
        li = el('li', { 'data-node': name }, el('strong', {}, name), el('progress', { max: 1, value: 0 }), el('span', { className: 'line' }));
        j.lines.append(li);
      }
      li.setAttribute('data-status', line.status || line.state || 'waiting');
      if (line.status === 'committed') li.querySelector('progress').value = 1;
      else if (length && line.bytes !== undefined) li.querySelector('progress').value = line.bytes / length;
      li.querySelector('.line').textContent = lineText(line, length);
    }
  }

  async function run() {
    if (running) return;
    running = true;
    while (queue.length) {
      const j = queue.shift();
      await (j.node ? sendToNode(j) : sendToAll(j));
    }
    running = false;
    ws.loadListing(); // show the new files
  }

  function finish(j, st, text) {
    j.row.setAttribute('data-state', st);
    j.msg.textContent = text;
    if (st === 'done') j.bar.value = 1;
  }

  // One PUT with the file as its body, its progress on the row's bar; resolves with the xhr (or null: no answer).
  function put(j, url) {
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open('PUT', ws.absolute(url));
      if (ws.urlAuth) xhr.setRequestHeader('Authorization', ws.urlAuth);
      if (j.keep) xhr.setRequestHeader('If-None-Match', '*'); // a node answers 412 if it exists
      j.row.setAttribute('data-state', 'sending');
      j.msg.textContent = 'sending ' + ws.humanSize(j.file.size);
      xhr.upload.onprogress = (e) => { if (e.lengthComputable && e.total) j.bar.value = e.loaded / e.total; };
      xhr.upload.onload = () => { // the body is out; a fan-out's nodes store it now
        if (j.lines) { j.row.setAttribute('data-state', 'storing'); j.msg.textContent = 'sent once; the nodes store it…'; }
      };
      xhr.onload = () => resolve(xhr);
      // A server refusing early (e.g. too large) may close the connection before answering.
      xhr.onerror = () => resolve(null);
      xhr.send(j.file);
    });
  }
  const NO_ANSWER = 'failed: the connection was closed (too large, or the node is down?)';

  async function sendToNode(j) {
    const xhr = await put(j, ws.fileUrl(j.node, ws.joinPath(j.dir, j.file.name)));
    if (!xhr) finish(j, 'error', NO_ANSWER);
    else if (xhr.status >= 200 && xhr.status < 300) finish(j, 'done', xhr.status === 201 ? 'stored (new file)' : 'stored (replaced)');
    else finish(j, 'error', 'refused (' + xhr.status + '): ' + ws.errorMessage(xhr.status, xhr.responseText));
  }

  async function sendToAll(j) {
    let answered = false;
    const poll = async () => { // the nodes' progress while the answer is not in (ignored if asked elsewhere)
      try {
        const p = await ws.getJSON('/cluster/uploads/' + encodeURIComponent(j.id));
        if (!answered) showLines(j, p.nodes, p.length);
      } catch (e) { /* not started yet, or another worker process runs it */ }
      if (!answered) setTimeout(poll, PROGRESS_MS);
    };
    setTimeout(poll, PROGRESS_MS);
    const xhr = await put(j, fanoutUrl(ws.joinPath(j.dir, j.file.name), j.mode, j.id));
    answered = true;
    let doc = null;
    try { doc = xhr ? JSON.parse(xhr.responseText) : null; } catch (e) { /* not JSON: a proxy's page */ }
    if (doc && doc.nodes) showLines(j, doc.nodes, doc.size);
    if (!xhr) finish(j, 'error', NO_ANSWER);
    else if (doc && doc.outcome === 'committed') finish(j, 'done', 'stored on every node (' + Object.keys(doc.nodes).length + ')');
    else if (doc && doc.outcome === 'partial') finish(j, 'partial', 'only partly stored (' + xhr.status + '): ' + doc.message);
    else finish(j, 'error', 'refused (' + xhr.status + '): ' + ws.errorMessage(xhr.status, xhr.responseText));
  }

  function box(name, checked) {
    return el('label', {}, el('input', { type: 'checkbox', value: name, checked, className: 'target' }), ' ' + name);
  }

  ws.hooks.init.push(() => {
    $('upload-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      enqueue(ev.submitter && ev.submitter.id === 'upload-fanout');
    });
  });
  ws.hooks.nodes.push((namesChanged) => {
    $('upload').hidden = !state.uploads;
    $('fanout-box').hidden = !state.fanout;
    if (namesChanged) $('targets').replaceChildren(...state.nodes.map((n) => box(n.name, n.name === state.self)));
  });
  ws.hooks.listing.push(() => { $('upload-dir').textContent = '/' + state.path; });

  Object.assign(ws, { uploadId, fanoutUrl, lineText });
})();
