-- The example configuration of etc/sse-daemon.yaml, written as statements:
--
--   twistd -n --pidfile= sse-daemon --config etc/sse-daemon.sql
--   publish:  curl -H 'Content-Type: application/json' -d '{"param1": "hello"}' http://127.0.0.1:8020/publish
--   watch:    curl -N http://127.0.0.1:8020/testsse
--
-- Both files define the same streams, connectors and options (a test compares them).
-- The YAML file's admin: section (the status page and /metrics) has no statement form;
-- to have it here too, add a YAML file holding only admin: with a second --config.
-- Events go round the loop:
--   curl -> Publish -> PublishStream (SSE) -> ListenStream -> ShowReceived (log)

@App:name('sse-daemon example')

CREATE STREAM PublishStream (param1 string);

-- the spec's source example, verbatim: it reads the sink below
CREATE SOURCE  ListenStream WITH (type='sse', map.type="json", receiver.url='http://localhost:8020/testsse') (param1 string);

-- an HTTP ingest: POST JSON to publish into PublishStream
CREATE SOURCE Publish WITH (type='http', stream='PublishStream', receiver.url='http://127.0.0.1:8020/publish');

-- the spec's sink example, listening on 127.0.0.1 only, with its history on disk
-- (docs/durability.md); its stream is declared above, so the attribute list
-- "(param1 string)" of the spec's statement is not repeated here
CREATE SINK PublishStream WITH (
    type='sse-server',
    map.type="json",
    server.host='127.0.0.1',
    server.port='8020',
    server.path='testsse',
    history.path='var/PublishStream.sqlite3'
);

-- every event the source received, in the daemon's log
CREATE SINK ShowReceived WITH (type='log', stream='ListenStream', prefix="received by ListenStream: ");
