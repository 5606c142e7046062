import BatonKafka
import Logging
import Synchronization

/// A producer that replaces itself when it hits a fatal error (an idempotent producer whose epoch the broker
/// no longer accepts after an outage, for example), instead of failing every record from then on. The record
/// that met the error fails; the next one goes through a new producer.
public final class ResilientProducer: Sendable {
    let configuration: KafkaProducerConfiguration
    let logger: Logger
    let current: Mutex<KafkaProducer>

    public init(configuration: KafkaProducerConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        current = Mutex(try KafkaProducer(configuration: configuration, logger: logger))
    }

    var producer: KafkaProducer { current.withLock { $0 } }

    /// Produces one record and waits until the broker has it.
    @discardableResult
    public func send(_ record: ProducerRecord) async throws -> DeliveryReport {
        let producer = self.producer
        do {
            return try await producer.send(record)
        } catch {
            if let fatal = (error as? KafkaError).flatMap({ $0.isFatal ? $0 : nil }) ?? producer.fatalError {
                await replace(producer, because: fatal)
            }
            throw error
        }
    }

    /// Hands a record over without waiting for it (see `KafkaProducer.enqueue`); `flush` reports failures.
    public func enqueue(_ record: ProducerRecord) async throws {
        let producer = self.producer
        do { try await producer.enqueue(record) } catch {
            if let fatal = producer.fatalError { await replace(producer, because: fatal) }
            throw error
        }
    }

    /// Waits for everything enqueued; throws the first delivery failure since the last flush.
    public func flush(timeout: Duration = .seconds(30)) async throws {
        let producer = self.producer
        do { try await producer.flush(timeout: timeout) } catch {
            if let fatal = producer.fatalError { await replace(producer, because: fatal) }
            throw error
        }
    }

    /// Swaps in a new producer for `dead`, unless that was done already.
    func replace(_ dead: KafkaProducer, because error: KafkaError) async {
        let replaced: Bool
        do {
            let fresh = try KafkaProducer(configuration: configuration, logger: logger)
            replaced = current.withLock { c in
                guard c === dead else { return false }
                c = fresh
                return true
            }
        } catch {
            logger.error("could not create a producer to replace one that hit a fatal error: \(error)")
            return
        }
        if replaced {
            logger.warning("replaced a producer after a fatal error: \(error)")
            await dead.close(timeout: .zero)
        }
    }

    public func close(timeout: Duration = .seconds(10)) async { await producer.close(timeout: timeout) }
}
