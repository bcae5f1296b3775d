// The demo page: Uppy's Dashboard uploads with tus, then each upload's processing is
// followed live over Server-Sent Events until it is ready (with its thumbnail) or failed.
import { Dashboard, Tus, Uppy } from './vendor/uppy/uppy.min.mjs'

const api = document.body.dataset.api ?? ''
const list = document.getElementById('uploads')
const EVENTS = [
  'upload.received', 'upload.processing', 'processing.step_started', 'processing.step_progress',
  'processing.step_done', 'variant.ready', 'upload.ready', 'upload.failed', 'upload.expired',
  'upload.terminated',
]

const uppy = new Uppy({ autoProceed: false })
  .use(Dashboard, {
    inline: true,
    target: '#widget',
    height: 360,
    width: '100%',
    showProgressDetails: true,
    proudlyDisplayPoweredByUppy: false,
  })
  .use(Tus, { endpoint: `${api}/files/`, chunkSize: 8 * 1024 * 1024, removeFingerprintOnSuccess: true })

uppy.on('upload-success', (file, response) => follow(file.name, response.uploadURL))

function card (uploadId, name) {
  const item = document.createElement('li')
  item.className = 'upload'
  item.dataset.uploadId = uploadId
  item.dataset.state = 'received'
  const title = document.createElement('div')
  title.className = 'name'
  title.textContent = name
  const state = document.createElement('div')
  state.className = 'state'
  state.textContent = 'received'
  const bar = document.createElement('progress')
  bar.max = 1
  bar.value = 0
  const variants = document.createElement('div')
  variants.className = 'variants'
  item.append(title, state, bar, variants)
  list.prepend(item)
  return { item, state, bar, variants }
}

function follow (name, uploadUrl) {
  const uploadId = uploadUrl.split('/').filter(Boolean).pop()
  const view = card(uploadId, name)
  const base = `${api}/api/v1/uploads/${uploadId}`
  const source = new EventSource(`${base}/events`)
  const show = (state, text) => {
    view.item.dataset.state = state
    view.state.textContent = text
  }
  const handlers = {
    'upload.processing': () => show('processing', 'processing'),
    'processing.step_started': (data) => show('processing', `processing: ${data.step}`),
    'processing.step_progress': (data) => { view.bar.value = data.progress },
    'processing.step_done': (data) => show('processing', `processing: ${data.step} ${data.outcome}`),
    'variant.ready': (data) => addVariant(view, base, data.variant),
    'upload.ready': (data) => {
      view.bar.value = 1
      show('ready', `ready · ${data.detected_type ?? 'unknown type'} · sha256 ${String(data.sha256).slice(0, 12)}…`)
      source.close()
    },
    'upload.failed': (data) => { show('failed', `failed: ${data.failure_reason}`); source.close() },
    'upload.expired': () => { show('failed', 'expired'); source.close() },
    'upload.terminated': () => { show('failed', 'removed'); source.close() },
  }
  for (const type of EVENTS) {
    source.addEventListener(type, (event) => handlers[type]?.(JSON.parse(event.data)))
  }
}

function addVariant (view, base, variant) {
  const url = `${base}/variants/${encodeURIComponent(variant.name)}`
  if (variant.name.startsWith('256.') && !view.variants.querySelector('img')) {
    const image = document.createElement('img')
    image.className = 'thumbnail'
    image.alt = `thumbnail (${variant.width}×${variant.height})`
    image.src = url
    view.variants.prepend(image)
  }
  const link = document.createElement('a')
  link.href = url
  link.textContent = `${variant.name} (${variant.width}×${variant.height}, ${Math.round(variant.size / 1024)} KiB)`
  view.variants.append(link)
}
