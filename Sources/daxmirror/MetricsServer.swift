import DaxCore
import FleetMetrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// `GET /metrics` over HTTP/1.1 (SwiftNIO), bounded against any client.
/// Scrapes never pile up: one runs at a time, and an answer younger than
/// `maxAge` is served again to whoever asks meanwhile (Prometheus servers in
/// HA pairs scrape together).
///
/// What a client can make it hold is bounded, whatever the client does:
/// - one request per connection, answered with `Connection: close`: after a
///   request's head nothing more is read from that connection, so requests
///   pipelined without reading the answers cost nothing;
/// - at most `Limits.connections` connections (fewer when the open-file
///   limit is low: scrapes need descriptors too); when all are taken, the
///   oldest one still waiting for its request is closed to make room, so
///   idle and slowloris connections cannot keep a scraper out;
/// - a request's head must arrive within `Limits.requestSeconds`, and a
///   connection lives at most `Limits.lifetimeSeconds`, answer written or
///   not (slowloris, idle and never-reading clients);
/// - a request that is not HTTP/1.0 or 1.1 (0.9, 2.0) is answered 505, any
///   other malformed one 400 (NIO), CONNECT and every method but GET/HEAD 405,
///   `Expect: 100-continue` gets the final answer at once — each then closed.
final class MetricsServer: @unchecked Sendable {
    struct Limits {
        var connections = 64
        var requestSeconds: Int64 = 10
        /// Derived, not set: three times the request's deadline.
        var lifetimeSeconds: Int64 { 3 * requestSeconds }
    }

    private let lock = NIOLock()
    private var scrape: Scrape
    private var last: (at: Double, body: [UInt8])?
    /// Open connections, and those still waiting for a request's head
    /// (oldest first): the ones to close when a new one needs room.
    private struct Slots {
        var open = 0
        var waiting: [(id: ObjectIdentifier, channel: Channel)] = []
        var evicted: Set<ObjectIdentifier> = []
    }
    private let slots = NIOLockedValueBox(Slots())
    let maxAge: Double
    let limits: Limits

    /// Descriptors kept for scrapes (a directory, maps, pagemap, sysfs and
    /// libndctl's context are open at once) and the server's own (epoll,
    /// its wake-ups, the listening socket, the standard streams).
    static let reservedDescriptors = 32

    init(maxAge: Double = 1, scrape: Scrape, limits: Limits = Limits()) throws {
        self.maxAge = maxAge
        self.scrape = scrape
        var l = limits
        let budget = try Self.raiseDescriptorLimit() - Self.reservedDescriptors
        guard budget >= 1 else {
            throw Failure(.systemError, "cannot serve: the open-file limit (ulimit -n) leaves no descriptor for a connection after the \(Self.reservedDescriptors) a scrape and the server need; raise it to 64 or more")
        }
        l.connections = min(l.connections, budget)
        self.limits = l
    }

    /// Raises the soft open-file limit to the hard one (at most 2^20), as
    /// servers do, and returns it.
    static func raiseDescriptorLimit() throws -> Int {
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        var rl = rlimit()
        guard getrlimit(resource, &rl) == 0 else { throw Failure.from(SystemCallError("getrlimit"), doing: "read the open-file limit") }
        let want = min(rl.rlim_max, 1 << 20)
        if rl.rlim_cur < want {
            var raised = rl
            raised.rlim_cur = want
            if setrlimit(resource, &raised) == 0 { rl = raised }
        }
        return Int(min(rl.rlim_cur, 1 << 20))
    }

    /// The exposition, fresh or at most `maxAge` old; or why it could not be read.
    func body() -> Result<[UInt8], SystemCallError> {
        lock.withLock {
            if let last, monotonicSeconds() - last.at < maxAge { return .success(last.body) }
            do throws(SystemCallError) {
                let body = try scrape.collect()
                last = (monotonicSeconds(), body)
                return .success(body)
            } catch {
                return .failure(error)
            }
        }
    }

    /// Takes a connection slot, closing the oldest connection still waiting
    /// for its request if all are taken; false when every slot is answering.
    fileprivate func admit(_ channel: Channel) -> Bool {
        let (admitted, evict): (Bool, Channel?) = slots.withLockedValue { s in
            var evict: Channel?
            if s.open >= limits.connections {
                guard !s.waiting.isEmpty else { return (false, nil) }
                let oldest = s.waiting.removeFirst()
                evict = oldest.channel
                s.evicted.insert(oldest.id)
                s.open -= 1  // its close releases nothing more (see release)
            }
            s.open += 1
            s.waiting.append((ObjectIdentifier(channel), channel))
            return (true, evict)
        }
        evict?.close(promise: nil)
        return admitted
    }

    /// The connection's request arrived: it is no longer one to evict.
    fileprivate func answering(_ channel: Channel) {
        slots.withLockedValue { s in s.waiting.removeAll { $0.id == ObjectIdentifier(channel) } }
    }

    /// The connection closed; an evicted one was released when evicted.
    fileprivate func release(_ channel: Channel) {
        slots.withLockedValue { s in
            let id = ObjectIdentifier(channel)
            if let i = s.waiting.firstIndex(where: { $0.id == id }) {
                s.waiting.remove(at: i)
                s.open -= 1
            } else if !s.evicted.contains(id) {
                s.open -= 1
            } else {
                s.evicted.remove(id)
            }
        }
    }

    /// Binds and serves until the process is ended. Errors binding are
    /// Failures with their exit code (an address in use: 15, busy).
    func serve(host: String, port: Int, ready: (String) -> Void) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 1)
            // Out of descriptors, accept(2) fails (EMFILE) at once, forever:
            // back off instead of spinning. (NIO adds this handler itself
            // only on its async bind.)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler()) }
            }
            .childChannelInitializer { channel in self.initialize(channel) }
        let channel: Channel
        let shown = IPAddress.display(host, port)
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch let e as IOError {
            try? group.syncShutdownGracefully()
            if e.errnoCode == EADDRINUSE {
                throw Failure(.busy, "cannot listen on \(shown): the address is in use (another exporter?); pick another port with --listen")
            }
            if e.errnoCode == EADDRNOTAVAIL {
                throw Failure(.invalidArgument, "cannot listen on \(shown): no interface of this host has that address; give one it has (or 0.0.0.0 for all)")
            }
            throw Failure.from(SystemCallError("bind", shown, errno: Errno(e.errnoCode)), doing: "listen on")
        } catch {
            try? group.syncShutdownGracefully()
            throw Failure(.invalidArgument, "cannot listen on \(shown): not an address this host can bind")
        }
        let bound = channel.localAddress?.port ?? port
        ready(IPAddress.display(host, bound))
        try channel.closeFuture.wait()
    }

    private func initialize(_ channel: Channel) -> EventLoopFuture<Void> {
        guard admit(channel) else { return channel.close() }
        let loop = channel.eventLoop
        let lifetime = loop.scheduleTask(in: .seconds(limits.lifetimeSeconds)) { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in
            lifetime.cancel()
            self.release(channel)
        }
        let handler = MetricsHTTPHandler(server: self, requestSeconds: limits.requestSeconds)
        return channel.pipeline.configureHTTPServerPipeline(withPipeliningAssistance: false, withErrorHandling: true).flatMap {
            channel.pipeline.addHandler(handler)
        }
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let server: MetricsServer
    private let requestSeconds: Int64
    private var answered = false
    private var headDeadline: Scheduled<Void>?

    init(server: MetricsServer, requestSeconds: Int64) {
        self.server = server
        self.requestSeconds = requestSeconds
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        headDeadline = context.eventLoop.scheduleTask(in: .seconds(requestSeconds)) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) { headDeadline?.cancel() }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // One request per connection: whatever follows its head is dropped.
        guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
        answered = true
        headDeadline?.cancel()
        server.answering(context.channel)
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
        let (status, body, extra) = answer(head)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: String(body.count))
        headers.add(name: "Connection", value: "close")
        for (k, v) in extra { headers.add(name: k, value: v) }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD && !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    private func answer(_ head: HTTPRequestHead) -> (HTTPResponseStatus, [UInt8], [(String, String)]) {
        func text(_ s: String) -> [UInt8] { Array((s + "\n").utf8) }
        guard head.version == .http1_1 || head.version == .http1_0 else {
            return (.httpVersionNotSupported, text("daxmirror speaks HTTP/1.1 (and 1.0)"), [])
        }
        // The method first: CONNECT's target is no path at all.
        guard head.method == .GET || head.method == .HEAD else {
            return (.methodNotAllowed, text("GET /metrics only"), [("Allow", "GET, HEAD")])
        }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        guard path == "/metrics" else { return (.notFound, text("daxmirror serves /metrics"), []) }
        switch server.body() {
        case .success(let body): return (.ok, body, [])
        case .failure(let e):
            // Never a 200 with zeros: the scrape could not see the host.
            return (.serviceUnavailable, text("scrape failed: \(Failure.from(e, doing: "read").message)"), [("Retry-After", "5")])
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
