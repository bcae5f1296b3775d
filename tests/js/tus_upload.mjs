#!/usr/bin/env node
// Upload one file to a tus 1.0 server with tus-js-client (the Node build).
//
//   node tus_upload.mjs ENDPOINT FILE [--chunk-size N] [--parallel N] [--protocol P] [--header k=v] [--metadata k=v ...]
//
// --protocol is tus-js-client's: tus-v1 (default), ietf-draft-03 or ietf-draft-05.
//
// On success the final upload URL is printed on stdout (its only output) and
// the exit code is 0. On failure the error goes to stderr and the exit code is 1.
//
// The input is an fs.ReadStream with a path: the Node build turns it into a
// FileSource, which can be sliced, so it works for parallel uploads too
// (parallelUploads > 1 uses the concatenation extension: N partial uploads,
// then one POST with `Upload-Concat: final;...`).

import fs from 'node:fs'
import process from 'node:process'
import * as tus from 'tus-js-client'

const USAGE =
  'usage: node tus_upload.mjs ENDPOINT FILE [--chunk-size N] [--parallel N] [--protocol P] [--header k=v] [--metadata k=v ...]'

function fail(message) {
  process.stderr.write(`${message}\n`)
  process.exit(1)
}

function positiveInt(flag, value) {
  const n = Number(value)
  if (!Number.isSafeInteger(n) || n < 1) fail(`${flag} needs a positive integer, got ${value}\n${USAGE}`)
  return n
}

function parseArgs(argv) {
  const positional = []
  const options = { chunkSize: Number.POSITIVE_INFINITY, parallel: 1, protocol: 'tus-v1', metadata: {}, headers: {} }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    const needValue = () => {
      if (i + 1 >= argv.length) fail(`${arg} needs a value\n${USAGE}`)
      return argv[++i]
    }
    if (arg === '--chunk-size') {
      options.chunkSize = positiveInt(arg, needValue())
    } else if (arg === '--parallel') {
      options.parallel = positiveInt(arg, needValue())
    } else if (arg === '--protocol') {
      options.protocol = needValue()
    } else if (arg === '--header') {
      const pair = needValue()
      const eq = pair.indexOf('=')
      if (eq < 1) fail(`--header expects name=value, got ${pair}\n${USAGE}`)
      options.headers[pair.slice(0, eq)] = pair.slice(eq + 1)
    } else if (arg === '--metadata') {
      // Take every following k=v word until the next flag.
      let taken = 0
      while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
        const pair = argv[++i]
        const eq = pair.indexOf('=')
        if (eq < 1) fail(`--metadata expects k=v, got ${pair}\n${USAGE}`)
        options.metadata[pair.slice(0, eq)] = pair.slice(eq + 1)
        taken++
      }
      if (taken === 0) fail(`--metadata needs at least one k=v\n${USAGE}`)
    } else if (arg === '-h' || arg === '--help') {
      process.stdout.write(`${USAGE}\n`)
      process.exit(0)
    } else if (arg.startsWith('--')) {
      fail(`unknown option ${arg}\n${USAGE}`)
    } else {
      positional.push(arg)
    }
  }
  if (positional.length !== 2) fail(USAGE)
  return { endpoint: positional[0], file: positional[1], ...options }
}

function upload({ endpoint, file, chunkSize, parallel, protocol, metadata, headers }) {
  return new Promise((resolve, reject) => {
    const size = fs.statSync(file).size
    const input = fs.createReadStream(file)
    const up = new tus.Upload(input, {
      endpoint,
      chunkSize,
      protocol,
      parallelUploads: parallel,
      metadata,
      headers,
      // Each partial upload of a parallel upload gets the filename too, so the
      // server sees something useful for the parts as well.
      metadataForPartialUploads: parallel > 1 ? { ...metadata } : {},
      retryDelays: [0, 500, 1000],
      // No URL storage: each run is a fresh upload, nothing is written to disk.
      storeFingerprintForResuming: false,
      removeFingerprintOnSuccess: false,
      onError: (error) => reject(error),
      onSuccess: () => {
        if (!up.url) {
          reject(new Error('upload finished without an upload URL'))
          return
        }
        resolve({ url: up.url, size })
      },
    })
    up.start()
  })
}

try {
  const args = parseArgs(process.argv.slice(2))
  const { url } = await upload(args)
  process.stdout.write(`${url}\n`)
  process.exit(0)
} catch (error) {
  process.stderr.write(`tus upload failed: ${error?.stack ?? error}\n`)
  process.exit(1)
}
