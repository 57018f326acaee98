#!/usr/bin/env node
// Calls nba.v1.DecisionService/Decide over TLS with a bearer token.
//
// Built from the .proto alone (no generated code): @grpc/proto-loader reads
// protos/nba/v1/decision.proto at start-up.
//
// Environment:
//   NBA_ADDRESS      host:port of the server (default localhost:50051)
//   NBA_CA           PEM file of the CA that signed the server's certificate;
//                    unset: the system's trusted roots
//   NBA_TOKEN        bearer token (sent as "authorization: Bearer <token>");
//                    unset: no credentials, the server answers UNAUTHENTICATED
//   NBA_SERVER_NAME  optional: the name to check the server certificate against
//                    when it differs from the host in NBA_ADDRESS (e.g. through
//                    `kubectl port-forward`)
//
// Prints the decision as JSON. On error prints the gRPC status and exits with
// the status code (never 0).
'use strict';

const fs = require('fs');
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const DEADLINE_MS = 2000;

function loadService() {
  const definition = protoLoader.loadSync('nba/v1/decision.proto', {
    // Imports are resolved against the proto root ("nba/v1/..."); google/protobuf/*
    // (e.g. field_mask.proto) comes with protobufjs, the loader's parser.
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto: customer_id, atm_decline, ...
    longs: String,
    enums: String,
    defaults: true, // print every field of the response, also false/0/""
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).nba.v1.DecisionService;
}

function credentials() {
  const ca = process.env.NBA_CA ? fs.readFileSync(process.env.NBA_CA) : null; // null: system roots
  let creds = grpc.credentials.createSsl(ca);
  const token = process.env.NBA_TOKEN;
  if (token) {
    // Call credentials: added to every call's metadata (grpc-js only sends them over TLS).
    const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
      const metadata = new grpc.Metadata();
      metadata.add('authorization', `Bearer ${token}`);
      callback(null, metadata);
    });
    creds = grpc.credentials.combineChannelCredentials(creds, bearer);
  }
  return creds;
}

function main() {
  const address = process.env.NBA_ADDRESS || 'localhost:50051';
  const options = {};
  if (process.env.NBA_SERVER_NAME) {
    options['grpc.ssl_target_name_override'] = process.env.NBA_SERVER_NAME;
    options['grpc.default_authority'] = process.env.NBA_SERVER_NAME;
  }
  const DecisionService = loadService();
  const client = new DecisionService(address, credentials(), options);

  const request = {
    customer_id: 'c42',
    origin_channel: 'atm',
    event: {
      atm_decline: { amount: 120, balance: 20, currency: 'EUR', atm_id: 'atm-7', latitude: 40.4168, longitude: -3.7038 },
    },
  };
  client.Decide(request, { deadline: Date.now() + DEADLINE_MS }, (err, response) => {
    client.close();
    if (err) {
      const name = grpc.status[err.code] || 'UNKNOWN';
      console.error(`Decide failed: ${name} (code ${err.code}): ${err.details}`);
      process.exitCode = err.code || 1;
      return;
    }
    console.log(JSON.stringify(response, null, 2));
  });
}

main();
