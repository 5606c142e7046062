import BatonCore
import BatonKafka
import BatonPlanning
import BatonRuntime
import BatonWire
import Foundation
import Logging
import Metrics
import Tracing

extension OwnedPartition {
    // MARK: Processing

    /// Applies a batch of events and writes everything that results in one transaction with the consumed
    /// offsets (the plan: `PartitionBook.plan`). On failure nothing of it happened: the instances are restored.
    func process(_ messages: [KafkaMessage], now: Timestamp, refused: [RecordOrigin: String]) async throws {
        var plan = book.plan(messages, now: now, refused: refused, dispatches: dispatches)
        if plan.missesWorkflows {
            // A start for a definition registered a moment ago, perhaps: read the registry, then plan again.
            book.rollBack(plan)
            plan.tracing.end(nil)
            try await context.registry.catchUp(within: .seconds(2))
            plan = book.plan(messages, now: now, refused: refused, dispatches: dispatches)
        }
        defer {
            plan.tracing.end(nil)
            book.settleThawed(plan)
        }
        do {
            try await context.commandTopics.ensure(Set(plan.outgoing.compactMap { r in if case .command = r.origin { r.record.topic } else { nil } }))
            let commandTopics = context.commandTopics
            let partition = partition
            book.prepareCommands(&plan) { topic in commandTopics.partition(for: topic, eventsPartition: partition) }
            try await commit(plan.outgoing, messages: messages)
            for id in plan.purged {
                book.instances[id] = nil
                fired[id] = nil
            }
        } catch {
            book.rollBack(plan)
            plan.tracing.end(error)
            throw error
        }
        settle(plan, messages)
    }

    // MARK: After the commit

    /// The batch committed: counts it, moves the partition's offset, and schedules the timers of what changed.
    func settle(_ plan: BatchPlan, _ messages: [KafkaMessage]) {
        var observed = plan.observed
        for (id, original) in plan.originals where original?.status != book.instances[id]?.status {
            observed.statusChanges.append((original, book.instances[id]))
        }
        observed.record(into: metrics, dispatches: &dispatches)
        metrics.batchEvents.record(messages.count)
        if let last = messages.last { nextOffset = last.offset + 1 }
        settleMailboxes(plan)
        // A firing read back is no longer in flight, applied or not: a timer still armed (its firing was ignored
        // as not yet due, say after the clock went back) is scheduled again, to fire when it is due.
        for entry in plan.firingsBack where fired[entry.instanceID]?.remove(entry) != nil {
            if fired[entry.instanceID]?.isEmpty == true { fired[entry.instanceID] = nil }
            if plan.originals[entry.instanceID] == nil, let state = book.instances[entry.instanceID] { schedule(state) }
        }
        for id in plan.originals.keys {
            guard let state = book.instances[id] else { continue }
            if let pending = fired[id] {
                let stillArmed = pending.filter { entry in state.timers.contains { $0.key == entry.key && $0.dueAt == entry.dueAt } }
                fired[id] = stillArmed.isEmpty ? nil : stillArmed
            }
            schedule(state)
            book.instances.settle(id)
        }
        reportGauges()
    }

    func settleMailboxes(_ plan: BatchPlan) {
        for key in plan.mailboxOriginals.keys {
            fired[key] = nil
            schedule(mailbox: key)
            for effect in plan.mailboxEffects[key] ?? [] {
                switch effect {
                case .deliver: metrics.mailboxRecords("delivered").increment()
                case .dropped(let record, let reason):
                    logger.info("a kept record was dropped unused", metadata: ["mailbox": "\(key)", "record": "\(record.id)", "reason": "\(reason)"])
                    metrics.mailboxRecords("dropped").increment()
                case .expired: break
                }
            }
        }
        if !plan.returned.isEmpty { metrics.mailboxRecords("returned").increment(by: plan.returned.count) }
    }
}
