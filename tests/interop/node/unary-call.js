// One unary gRPC call with raw bytes in and out, so tests need no .proto files.
//
//   node unary-call.js --target xds:///myservice --method /pkg.Svc/Method --request-hex 0a0470696e67
//
// An xds:/// target makes this the proxyless xDS client (bootstrap from GRPC_XDS_BOOTSTRAP);
// any other target (127.0.0.1:PORT) is a plain grpc-js client. Prints one JSON line:
// {"ok":true,"responseHex":"...","ms":12} or {"ok":false,"code":14,"details":"...","ms":...}.
'use strict';
const grpc = require('@grpc/grpc-js');

function parseArgs(argv) {
  const args = { timeoutMs: 10000, requestHex: '' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    args[key] = argv[i + 1];
  }
  if (!args.target || !args.method) {
    console.error('usage: unary-call.js --target T --method /pkg.Svc/M [--request-hex H] [--timeout-ms N]');
    process.exit(2);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));
if (args.target.startsWith('xds:')) {
  require('@grpc/grpc-js-xds').register();  // adds the xds: resolver and the xDS LB policies
}
const client = new grpc.Client(args.target, grpc.credentials.createInsecure());
const identity = (b) => b;
const started = Date.now();
client.makeUnaryRequest(
  args.method,
  identity,
  identity,
  Buffer.from(args.requestHex, 'hex'),
  new grpc.Metadata(),
  { deadline: Date.now() + Number(args.timeoutMs) },
  (err, response) => {
    const ms = Date.now() - started;
    if (err) {
      console.log(JSON.stringify({ ok: false, code: err.code, details: err.details, ms }));
    } else {
      console.log(JSON.stringify({ ok: true, responseHex: Buffer.from(response).toString('hex'), ms }));
    }
    client.close();
    // The xDS client can keep timers alive after close(); a one-shot tool exits explicitly
    // (stdout to a pipe is synchronous on Linux, so the line above is not lost).
    process.exit(err ? 1 : 0);
  },
);
