import DaxCore
import FleetMetrics
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// `GET /metrics` over HTTP/1.1 (SwiftNIO). Scrapes never pile up: one runs
/// at a time, and an answer younger than `maxAge` is served again to whoever
/// asks meanwhile (Prometheus servers in HA pairs scrape together).
final class MetricsServer: @unchecked Sendable {
    private let lock = NIOLock()
    private var scrape = Scrape()
    private var last: (at: Double, body: [UInt8])?
    let maxAge: Double

    init(maxAge: Double = 1, scrape: Scrape = Scrape()) {
        self.maxAge = maxAge
        self.scrape = scrape
    }

    /// The exposition, fresh or at most `maxAge` old.
    func body() -> [UInt8] {
        lock.withLock {
            if let last, monotonicSeconds() - last.at < maxAge { return last.body }
            let body = scrape.collect()
            last = (monotonicSeconds(), body)
            return body
        }
    }

    /// Binds and serves until the process is ended. Errors binding are
    /// Failures with their exit code (an address in use: 15, busy).
    func serve(host: String, port: Int, ready: (String) -> Void) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 64)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(server: self))
                }
            }
        let channel: Channel
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch let e as IOError {
            try? group.syncShutdownGracefully()
            let errno = Errno(e.errnoCode)
            if e.errnoCode == EADDRINUSE {
                throw Failure(.busy, "cannot listen on \(host):\(port): the address is in use (another exporter?); pick another port with --listen")
            }
            throw Failure.from(SystemCallError("bind", "\(host):\(port)", errno: errno), doing: "listen on")
        } catch {
            try? group.syncShutdownGracefully()
            throw Failure(.invalidArgument, "cannot listen on \(host):\(port): \(error)")
        }
        let bound = channel.localAddress?.port ?? port
        ready(host.contains(":") ? "[\(host)]:\(bound)" : "\(host):\(bound)")
        try channel.closeFuture.wait()
    }
}

private final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    private let server: MetricsServer
    private var head: HTTPRequestHead?

    init(server: MetricsServer) { self.server = server }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            let (status, type, body): (HTTPResponseStatus, String, [UInt8])
            switch (head.method, path) {
            case (.GET, "/metrics"), (.HEAD, "/metrics"):
                (status, type, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", server.body())
            case (_, "/metrics"):
                (status, type, body) = (.methodNotAllowed, "text/plain", Array("GET /metrics only\n".utf8))
            default:
                (status, type, body) = (.notFound, "text/plain", Array("daxmirror serves /metrics\n".utf8))
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: String(body.count))
            let keepAlive = head.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            }
            let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
            let channel = context.channel
            if !keepAlive { done.whenComplete { _ in channel.close(promise: nil) } }
        }
    }
}
