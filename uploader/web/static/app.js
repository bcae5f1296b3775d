// The console of one principal: Uppy's Dashboard uploads with tus; below it, the
// principal's uploads from the server (newest first, a page at a time), each followed
// live over Server-Sent Events, with its size, type, thumbnail, a download link and,
// with the delete scope, a delete button. A token in the page's own URL (?token=...)
// is used for everything: tus and fetch send it as a header, EventSource, links and
// images (which cannot send headers) as ?access_token=.
import { Dashboard, Tus, Uppy } from './vendor/uppy/uppy.min.mjs'

const api = document.body.dataset.api ?? ''
const token = new URLSearchParams(window.location.search).get('token')
const authHeaders = token ? { Authorization: `Bearer ${token}` } : {}
const list = document.getElementById('uploads')
const more = document.getElementById('more')
const whoami = document.getElementById('whoami')
const notice = document.getElementById('notice')
const cards = new Map()
const removed = new Set() // deleted or gone: a late answer or a replayed event never brings one back
const GONE = new Set(['terminated', 'expired'])
const FINISHED = new Set(['ready', 'failed', 'rejected'])
let scopes = new Set()
let cursor = null
let newestShown = '' // created_at of the newest upload listed: later ones are new, earlier ones paged

const withToken = (url) => (token ? `${url}${url.includes('?') ? '&' : '?'}access_token=${encodeURIComponent(token)}` : url)
const call = (path, options = {}) => fetch(`${api}${path}`, { ...options, headers: { ...authHeaders, ...(options.headers ?? {}) } })

function warn (text) {
  notice.textContent = text
  notice.hidden = !text
}

function size (bytes) {
  if (bytes === null || bytes === undefined) return 'size unknown'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = bytes
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1 }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`
}

async function showUsage () {
  const response = await call('/api/v1/usage')
  if (response.status === 401) {
    warn('This server needs a token: open this page as /?token=<your token>.')
    return false
  }
  if (!response.ok) { warn(`usage: ${response.status}`); return false }
  const usage = await response.json()
  scopes = new Set(usage.scopes)
  const bytes = usage.bytes.limit === null ? size(usage.bytes.used) : `${size(usage.bytes.used)} of ${size(usage.bytes.limit)}`
  const active = usage.active_uploads.limit === null ? '' : ` · ${usage.active_uploads.used} of ${usage.active_uploads.limit} unfinished`
  whoami.textContent = `${usage.principal} · ${bytes} held${active}`
  whoami.dataset.used = String(usage.bytes.used)
  return true
}

function card (status) {
  const item = document.createElement('li')
  item.className = 'upload'
  item.dataset.uploadId = status.id
  const title = document.createElement('div')
  title.className = 'name'
  title.textContent = status.filename ?? status.id
  const facts = document.createElement('div')
  facts.className = 'facts'
  const state = document.createElement('div')
  state.className = 'state'
  const bar = document.createElement('progress')
  bar.max = 1
  const variants = document.createElement('div')
  variants.className = 'variants'
  const actions = document.createElement('div')
  actions.className = 'actions'
  const download = document.createElement('a')
  download.className = 'download'
  download.textContent = 'download'
  download.href = withToken(`${api}/api/v1/uploads/${status.id}/content`)
  download.hidden = true
  actions.append(download)
  if (scopes.has('delete')) {
    const remove = document.createElement('button')
    remove.type = 'button'
    remove.className = 'delete'
    remove.textContent = 'delete'
    remove.addEventListener('click', () => removeUpload(status.id))
    actions.append(remove)
  }
  item.append(title, facts, state, bar, variants, actions)
  const view = { item, title, facts, state, bar, variants, download, thumbnail: null }
  cards.set(status.id, view)
  render(view, status)
  return view
}

function render (view, status) {
  view.item.dataset.state = status.state
  view.facts.textContent = `${size(status.length)} · ${status.detected_type ?? status.declared_type ?? 'type unknown'}`
  view.bar.value = status.state === 'ready' ? 1 : (status.progress ?? 0)
  // Rejected uploads, and those refused for their type or digest, have no bytes to download.
  const gone = status.state === 'rejected' || /^upload\.(type_not_allowed|digest_mismatch)/.test(status.failure_reason ?? '')
  view.download.hidden = !FINISHED.has(status.state) || gone
  const type = status.detected_type ?? 'unknown type'
  view.state.textContent = {
    failed: `failed: ${status.failure_reason}`,
    rejected: `rejected: ${status.failure_reason}`,
    ready: `ready · ${type} · sha256 ${String(status.sha256).slice(0, 12)}…`,
  }[status.state] ?? status.state
  for (const variant of status.variants ?? []) addVariant(view, status.id, variant)
}

function addVariant (view, uploadId, variant) {
  if (view.variants.querySelector(`a[data-variant="${CSS.escape(variant.name)}"]`)) return
  const url = withToken(`${api}/api/v1/uploads/${uploadId}/variants/${encodeURIComponent(variant.name)}`)
  if (variant.name.startsWith('256.') && !view.thumbnail) {
    // An image's own thumbnail, a document's first page or a video's poster frame.
    const image = document.createElement('img')
    image.className = 'thumbnail'
    image.alt = `preview (${variant.width}×${variant.height})`
    image.src = url
    view.thumbnail = image
    view.variants.prepend(image)
  }
  const link = document.createElement('a')
  link.href = url
  link.dataset.variant = variant.name
  link.textContent = `${variant.name} (${variant.width}×${variant.height}, ${Math.round(variant.size / 1024)} KiB)`
  view.variants.append(link)
}

function forget (uploadId) {
  removed.add(uploadId)
  cards.get(uploadId)?.item.remove()
  cards.delete(uploadId)
}

// Uploads whose status is being fetched: an event that comes meanwhile (before the card
// exists, or after the fetch was answered) asks for one more fetch once it is done.
const fetching = new Map()

async function refresh (uploadId, options = {}) {
  const inFlight = fetching.get(uploadId)
  if (inFlight) { inFlight.again = true; return }
  const mark = { again: false }
  fetching.set(uploadId, mark)
  try {
    await refreshOnce(uploadId, options)
  } finally {
    fetching.delete(uploadId)
  }
  if (mark.again) await refresh(uploadId, options)
}

async function refreshOnce (uploadId, { prepend = true } = {}) {
  if (removed.has(uploadId)) return
  const response = await call(`/api/v1/uploads/${uploadId}`)
  if (response.status === 404) { forget(uploadId); return }
  if (!response.ok || removed.has(uploadId)) return
  const status = await response.json()
  const view = cards.get(uploadId)
  if (GONE.has(status.state)) { forget(uploadId); return }
  if (view) render(view, status)
  else if (status.concat !== 'partial' && status.created_at >= newestShown) {
    // A new upload (from this page, or another client of the principal); older ones the
    // event history mentions belong to pages not loaded yet.
    const made = card(status)
    if (prepend) list.prepend(made.item)
    else list.append(made.item)
  }
}

async function loadPage () {
  const query = new URLSearchParams({ limit: '20' })
  if (cursor) query.set('cursor', cursor)
  const response = await call(`/api/v1/uploads?${query}`)
  if (!response.ok) { warn(`listing uploads: ${response.status}`); return }
  const page = await response.json()
  if (!cursor && page.items.length) newestShown = page.items[0].created_at
  for (const status of page.items) {
    if (!GONE.has(status.state) && !cards.has(status.id)) list.append(card(status).item)
  }
  cursor = page.next_cursor
  more.hidden = !cursor
}

async function removeUpload (uploadId) {
  const response = await call(`/api/v1/uploads/${uploadId}`, { method: 'DELETE' })
  if (response.status === 204 || response.status === 404) {
    forget(uploadId)
    await showUsage()
  } else {
    warn(`delete: ${(await response.json()).detail ?? response.status}`)
  }
}

function followEverything () {
  // A reconnecting stream replays the principal's recent history first: events of uploads
  // shown are applied from what they carry, and only an upload's end is worth a request
  // (its variants, its checksum); an upload not shown is fetched only if it is new.
  const source = new EventSource(withToken(`${api}/api/v1/events`))
  const shownSince = () => (newestShown ? new Date(newestShown).getTime() : 0)
  const update = (event) => {
    const data = JSON.parse(event.data)
    const uploadId = data.upload_id
    if (removed.has(uploadId)) return
    const view = cards.get(uploadId)
    if (event.type === 'upload.terminated' || event.type === 'upload.expired') { forget(uploadId); showUsage(); return }
    if (!view) {
      if (fetching.has(uploadId)) refresh(uploadId) // its card is on the way: fetched again after
      else if (event.type === 'upload.created' && new Date(data.at).getTime() >= shownSince()) refresh(uploadId)
      return
    }
    if (event.type === 'variant.ready') { addVariant(view, uploadId, data.variant); return }
    if (event.type === 'processing.step_progress') { view.bar.value = data.progress; return }
    if (event.type === 'processing.step_started') { view.state.textContent = `processing: ${data.step}`; return }
    if (['upload.ready', 'upload.failed', 'upload.rejected'].includes(event.type)) { refresh(uploadId); showUsage(); return }
    if (data.state) {
      view.item.dataset.state = data.state
      view.state.textContent = data.state
      if (data.length) view.bar.value = data.offset / data.length
    }
  }
  for (const type of ['upload.created', 'upload.received', 'upload.processing', 'processing.step_started',
    'processing.step_progress', 'variant.ready', 'upload.ready', 'upload.failed', 'upload.rejected', 'upload.expired',
    'upload.terminated']) {
    source.addEventListener(type, update)
  }
}

const uppy = new Uppy({ autoProceed: false })
  .use(Dashboard, {
    inline: true,
    target: '#widget',
    height: 360,
    width: '100%',
    showProgressDetails: true,
    proudlyDisplayPoweredByUppy: false,
  })
  .use(Tus, {
    endpoint: `${api}/files/`,
    chunkSize: 8 * 1024 * 1024,
    removeFingerprintOnSuccess: true,
    headers: authHeaders,
  })
uppy.on('upload-success', (file, response) => refresh(response.uploadURL.split('/').filter(Boolean).pop()))
more.addEventListener('click', loadPage)

if (await showUsage()) {
  await loadPage()
  followEverything()
}
document.body.dataset.ready = 'true'
