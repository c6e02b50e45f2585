// A stand-in for Gmail's IMAP server: hoodiecrow-imap (a third-party IMAP test server, npm) with its
// X-GM-EXT-1 plugin (X-GM-MSGID, X-GM-LABELS), made to keep Gmail's one rule hoodiecrow leaves out:
// a label folder is a view of All Mail. One message (one X-GM-MSGID) shows in every folder its
// labels name, with the same labels everywhere; STORE +X-GM-LABELS on it makes it show in that
// label's folder too (Gmail does that; hoodiecrow alone only changes the label list).
//
// Gmail cannot be reached from here; tests/gmail_standin.py starts it on 127.0.0.1 only.
// Usage: node tests/gmail_standin.js PORT STORAGE.json LOG
//   STORAGE.json: hoodiecrow's storage (folders, "special-use", messages with X-GM-MSGID and
//   X-GM-LABELS); LOG: every command line a client sends is appended (literals' bytes left out),
//   so a test counts the FETCHes of bodies.
"use strict";

var fs = require("fs");
var hoodiecrow = require("hoodiecrow-imap");

var port = Number(process.argv[2]);
var storage = JSON.parse(fs.readFileSync(process.argv[3], "utf-8"));
var log = fs.openSync(process.argv[4], "a");

// Gmail's folder for a label: system labels by special-use, user labels by name.
var SYSTEM = {"\\Inbox": "INBOX"};

function folderOf(server, label) {
    if (SYSTEM[label]) {
        return server.getMailbox(SYSTEM[label]);
    }
    var found;
    Object.keys(server.folderCache).forEach(function(path) {
        var box = server.folderCache[path];
        if (path === label || [].concat(box["special-use"] || []).indexOf(label) >= 0) {
            found = found || box;
        }
    });
    return found;
}

function instances(server, msgid) {
    var out = [];
    Object.keys(server.folderCache).forEach(function(path) {
        (server.folderCache[path].messages || []).forEach(function(message) {
            if (message["X-GM-MSGID"] === msgid) {
                out.push([server.folderCache[path], message]);
            }
        });
    });
    return out;
}

// After a label STORE: the same labels on every instance, and an instance in each label's folder.
function labelsAsViews(server) {
    ["X-GM-LABELS", "+X-GM-LABELS"].forEach(function(name) {
        var original = server.storeHandlers[name];
        server.storeHandlers[name] = function(connection, message, flags, index, parsed, data) {
            original.apply(this, arguments);
            var labels = message["X-GM-LABELS"].slice();
            instances(server, message["X-GM-MSGID"]).forEach(function(pair) {
                pair[1]["X-GM-LABELS"] = labels.slice();
            });
            labels.forEach(function(label) {
                var box = folderOf(server, label);
                if (!box || instances(server, message["X-GM-MSGID"]).some(function(p) { return p[0] === box; })) {
                    return;
                }
                var added = server.appendMessage(box, message.flags, message.internaldate, message.raw, connection);
                added.message["X-GM-MSGID"] = message["X-GM-MSGID"];
                added.message["X-GM-LABELS"] = labels.slice();
            });
        };
    });
}

// Gmail holds one copy of a message per account: an APPEND of bytes it holds already stores nothing
// new. Into a folder that shows it, the answer is OK with the held copy's UID in APPENDUID; into
// another folder, the message gains that folder's label (one more view of the same X-GM-MSGID).
function oneCopyPerAccount(server) {
    var append = server.appendMessage;
    server.appendMessage = function(mailbox, flags, internaldate, raw, connection) {
        mailbox = typeof mailbox === "string" ? server.getMailbox(mailbox) : mailbox;
        var held = heldCopy(server, raw);
        var here = (mailbox.messages || []).filter(function(m) { return m.raw === raw; })[0];
        if (here) {
            fs.writeSync(log, "* DROPPED duplicate APPEND, UID " + here.uid + "\n");
            return {mailbox: mailbox, message: here};
        }
        var added = append.apply(this, [mailbox, flags, internaldate, raw, connection]);
        if (held) {
            added.message["X-GM-MSGID"] = held["X-GM-MSGID"];
            added.message["X-GM-LABELS"] = held["X-GM-LABELS"].concat(added.message["X-GM-LABELS"]);
        }
        return added;
    };
}

function heldCopy(server, raw) {
    var found;
    Object.keys(server.folderCache).forEach(function(path) {
        (server.folderCache[path].messages || []).forEach(function(message) {
            if (message.raw === raw) {
                found = found || message;
            }
        });
    });
    return found;
}

function logCommands(connection) {
    connection.socket.on("data", function(chunk) {
        // Command lines only: a literal's bytes follow a line ending in {n}; they are never bodies
        // of FETCH answers (those go the other way), so counting FETCH lines here is exact.
        chunk.toString("binary").split("\r\n").forEach(function(line) {
            if (/^\S+ (UID )?(FETCH|COPY|STORE|APPEND|SELECT|EXAMINE|STATUS|LIST)\b/i.test(line)) {
                fs.writeSync(log, line.slice(0, 300) + "\n");
            }
        });
    });
}

var server = hoodiecrow({
    plugins: ["ID", "IDLE", "NAMESPACE", "SPECIAL-USE", "UNSELECT", "X-GM-EXT-1", "UIDPLUS", "LITERALPLUS"],
    storage: storage,
    users: {"testuser": {password: "testpass"}}
});
server.registerCapability("X-GM-EXT-1");  // the plugin answers its commands but does not say so
labelsAsViews(server);
oneCopyPerAccount(server);
server.connectionHandlers.push(logCommands);
server.listen(port, "127.0.0.1", function() {
    process.stdout.write("ready " + port + "\n");
});
