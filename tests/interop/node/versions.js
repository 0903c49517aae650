// Prints the versions of the node gRPC peers as JSON; exits non-zero if grpc-js-xds cannot load.
'use strict';
const xds = require('@grpc/grpc-js-xds');

if (typeof xds.register !== 'function') {
  console.error('@grpc/grpc-js-xds has no register()');
  process.exit(1);
}
console.log(JSON.stringify({
  node: process.version,
  grpcJs: require('@grpc/grpc-js/package.json').version,
  grpcJsXds: require('@grpc/grpc-js-xds/package.json').version,
}));
